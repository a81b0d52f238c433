//! Events: what a handler consumes and a [`Producer`](crate::Producer) publishes.

use bytes::Bytes;

/// A message type with a home topic, an optional partition key and a codec.
///
/// Implement it with `#[derive(Event)]`; the derive reads `#[event(...)]`:
///
/// | option | meaning |
/// |---|---|
/// | `topic = "orders"` | required: the topic the event is published to and consumed from |
/// | `key = "order_id"` | the field whose value picks the partition (see [`EventKey`]) |
/// | `codec = path::ToCodec` | a type implementing [`Codec`] for this event; default [`codec::Json`] |
/// | `name = "OrderPlaced.v1"` | the stable type name; default the type's own name |
/// | `crate = "rk"` | the path to this crate, for a renamed dependency or a re-export; default `::retry_kafka` |
///
/// ```
/// use retry_kafka::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
/// #[event(topic = "orders", key = "order_id")]
/// struct OrderPlaced { order_id: u64, amount_cents: u64 }
///
/// let order = OrderPlaced { order_id: 42, amount_cents: 1999 };
/// assert_eq!(OrderPlaced::TOPIC, "orders");
/// assert_eq!(order.key().as_deref(), Some(&b"42"[..]));
/// let bytes = order.encode().unwrap();
/// assert_eq!(OrderPlaced::decode(&bytes).unwrap(), order);
/// ```
pub trait Event: Sized + Send + 'static {
    /// The topic this event is published to.
    const TOPIC: &'static str;
    /// A stable name for the type, used in logs and registry listings.
    const TYPE_NAME: &'static str;
    /// How the event becomes bytes and back.
    type Codec: Codec<Self>;

    /// The partition key: events with equal keys land on one partition, in order.
    fn key(&self) -> Option<Bytes> {
        None
    }

    /// Encodes the event with its codec.
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Self::Codec::encode(self)
    }

    /// Decodes an event with its codec.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Self::Codec::decode(bytes)
    }
}

/// Turns events into bytes and back.
///
/// ```
/// use retry_kafka::event::{Codec, CodecError};
///
/// /// Events that are plain UTF-8 text.
/// struct Text;
///
/// impl Codec<String> for Text {
///     fn encode(value: &String) -> Result<Vec<u8>, CodecError> {
///         Ok(value.clone().into_bytes())
///     }
///     fn decode(bytes: &[u8]) -> Result<String, CodecError> {
///         String::from_utf8(bytes.to_vec()).map_err(CodecError::new)
///     }
/// }
/// assert_eq!(Text::decode(b"hi").unwrap(), "hi");
/// ```
pub trait Codec<T> {
    /// Encodes `value`.
    fn encode(value: &T) -> Result<Vec<u8>, CodecError>;
    /// Decodes bytes received from a topic.
    fn decode(bytes: &[u8]) -> Result<T, CodecError>;
}

/// Built-in codecs.
pub mod codec {
    use super::{Codec, CodecError};

    /// JSON through `serde_json`: the default codec of `#[derive(Event)]`.
    ///
    /// ```
    /// use retry_kafka::event::{codec::Json, Codec};
    /// let bytes = Json::encode(&vec![1, 2]).unwrap();
    /// assert_eq!(bytes, b"[1,2]");
    /// let back: Vec<i32> = Json::decode(&bytes).unwrap();
    /// assert_eq!(back, [1, 2]);
    /// ```
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Json;

    impl<T: serde::Serialize + serde::de::DeserializeOwned> Codec<T> for Json {
        fn encode(value: &T) -> Result<Vec<u8>, CodecError> {
            serde_json::to_vec(value).map_err(CodecError::new)
        }

        fn decode(bytes: &[u8]) -> Result<T, CodecError> {
            serde_json::from_slice(bytes).map_err(CodecError::new)
        }
    }
}

/// An event could not be encoded or decoded.
///
/// A message whose payload does not decode skips the retries: it goes to the dead-letter queue
/// byte for byte, with `rk-error-kind: decode`.
///
/// ```
/// use retry_kafka::event::CodecError;
/// let error = CodecError::new("expected `{`");
/// assert_eq!(error.to_string(), "codec error: expected `{`");
/// ```
#[derive(Debug, thiserror::Error)]
#[error("codec error: {source}")]
pub struct CodecError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl CodecError {
    /// Wraps the codec's own error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

/// A value that can serve as a partition key.
///
/// Integers and text become their decimal or UTF-8 bytes, so the key reads the same in every
/// tool (`42` is the key `b"42"`).
///
/// ```
/// use retry_kafka::event::EventKey;
/// assert_eq!(&42u64.key_bytes()[..], b"42");
/// assert_eq!(&"eu-1".to_string().key_bytes()[..], b"eu-1");
/// ```
pub trait EventKey {
    /// The key's bytes.
    fn key_bytes(&self) -> Bytes;
}

macro_rules! decimal_keys {
    ($($ty:ty),*) => {$(
        impl EventKey for $ty {
            fn key_bytes(&self) -> Bytes {
                Bytes::from(self.to_string())
            }
        }
    )*};
}
decimal_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char, bool);

impl EventKey for String {
    fn key_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl EventKey for str {
    fn key_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl EventKey for Vec<u8> {
    fn key_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self)
    }
}

impl EventKey for Bytes {
    fn key_bytes(&self) -> Bytes {
        self.clone()
    }
}

impl<T: EventKey + ?Sized> EventKey for &T {
    fn key_bytes(&self) -> Bytes {
        (**self).key_bytes()
    }
}

impl<T: EventKey + ?Sized> EventKey for Box<T> {
    fn key_bytes(&self) -> Bytes {
        (**self).key_bytes()
    }
}
