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
/// | `codec = "msgpack"` | how the event becomes bytes: `"json"` (the default), `"msgpack"`, `"protobuf"`, `"raw"` (see [`codec`]), or a type implementing [`Codec`] for this event: `codec = my_codecs::Avro` |
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

/// Built-in codecs. `#[derive(Event)]` picks one with `codec = "..."` (or a type's path):
///
/// | codec | `codec =` | the event is | feature |
/// |---|---|---|---|
/// | [`Json`](codec::Json) | `"json"` (the default) | `Serialize + DeserializeOwned` | — |
/// | `MsgPack` | `"msgpack"` | `Serialize + DeserializeOwned` | `msgpack` |
/// | `Protobuf` | `"protobuf"` | a `prost::Message` | `protobuf` |
/// | [`Raw`](codec::Raw) | `"raw"` | a struct with one field: `String`, `Bytes` or `Vec<u8>` | — |
///
/// Whatever the codec, a payload that does not decode is a [`CodecError`]: the message goes to
/// the dead-letter queue byte for byte, with `rk-error-kind: decode`, and the consumer carries on.
pub mod codec;

/// A value whose bytes are the payload: what [`codec::Raw`] writes and reads.
///
/// Implemented for `String` (UTF-8 checked), [`Bytes`] and `Vec<u8>` (any bytes), and by
/// `#[derive(Event)]` with `codec = "raw"` for a struct with one such field. Decoding copies
/// the payload once, as every codec's `decode(&[u8])` does: a memcpy next to the network and
/// the handler, not worth a borrowed variant of [`Codec`].
///
/// ```
/// use retry_kafka::event::{CodecError, RawPayload};
///
/// /// A line of text without a line break.
/// struct Line(String);
///
/// impl RawPayload for Line {
///     fn as_payload(&self) -> &[u8] {
///         self.0.as_bytes()
///     }
///     fn from_payload(bytes: &[u8]) -> Result<Self, CodecError> {
///         let text = String::from_payload(bytes)?;
///         if text.contains('\n') {
///             return Err(CodecError::new("a line break inside a line"));
///         }
///         Ok(Line(text))
///     }
/// }
/// assert!(Line::from_payload(b"a\nb").is_err());
/// assert_eq!(Line::from_payload(b"ab").unwrap().as_payload(), b"ab");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a raw payload",
    label = "`codec = \"raw\"` needs `String`, `Bytes` or `Vec<u8>` here",
    note = "a structured payload takes a codec of its own: `codec = \"json\"`, `\"msgpack\"` or `\"protobuf\"`"
)]
pub trait RawPayload: Sized {
    /// The payload's bytes.
    fn as_payload(&self) -> &[u8];
    /// The value of a payload, or why these bytes are not one.
    fn from_payload(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl RawPayload for String {
    fn as_payload(&self) -> &[u8] {
        self.as_bytes()
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, CodecError> {
        // Checked before copying: an invalid payload costs no allocation.
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(CodecError::new)
    }
}

impl RawPayload for Bytes {
    fn as_payload(&self) -> &[u8] {
        self
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl RawPayload for Vec<u8> {
    fn as_payload(&self) -> &[u8] {
        self
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// What the macros' short forms `codec = "msgpack"` and `codec = "protobuf"` expand to, feature
/// on or off (reached through `__private` only).
///
/// The macro cannot see retry-kafka's features, so the expansion always names the codec and
/// asserts a marker trait of its feature at the user's `"msgpack"`. With the feature off, the
/// codec is an uninhabited stand-in that is a `Codec` of everything, so the marker's message
/// ("needs the `msgpack` feature", and how to enable it) is the only error.
pub(crate) mod short_forms {
    #[cfg(not(all(feature = "msgpack", feature = "protobuf")))]
    use super::{Codec, CodecError};

    /// Implemented by the codec when the `msgpack` feature is on.
    #[diagnostic::on_unimplemented(
        message = "`codec = \"msgpack\"` needs the `msgpack` feature of retry-kafka",
        label = "the MessagePack codec is behind the `msgpack` feature",
        note = "enable it where retry-kafka is a dependency, in Cargo.toml: `retry-kafka = {{ version = \"...\", features = [\"msgpack\"] }}`"
    )]
    pub trait MsgPackFeature {}

    /// Implemented by the codec when the `protobuf` feature is on.
    #[diagnostic::on_unimplemented(
        message = "`codec = \"protobuf\"` needs the `protobuf` feature of retry-kafka",
        label = "the Protobuf codec is behind the `protobuf` feature",
        note = "enable it where retry-kafka is a dependency, in Cargo.toml: `retry-kafka = {{ version = \"...\", features = [\"protobuf\"] }}`"
    )]
    pub trait ProtobufFeature {}

    #[cfg(feature = "msgpack")]
    pub use super::codec::MsgPack;
    #[cfg(feature = "msgpack")]
    impl MsgPackFeature for MsgPack {}
    /// Stands in for `codec::MsgPack` without the feature; never a value.
    #[cfg(not(feature = "msgpack"))]
    #[derive(Debug)]
    pub enum MsgPack {}
    #[cfg(not(feature = "msgpack"))]
    impl<T> Codec<T> for MsgPack {
        fn encode(_: &T) -> Result<Vec<u8>, CodecError> {
            Err(CodecError::new("the `msgpack` feature of retry-kafka is off"))
        }
        fn decode(_: &[u8]) -> Result<T, CodecError> {
            Err(CodecError::new("the `msgpack` feature of retry-kafka is off"))
        }
    }

    #[cfg(feature = "protobuf")]
    pub use super::codec::Protobuf;
    #[cfg(feature = "protobuf")]
    impl ProtobufFeature for Protobuf {}
    /// Stands in for `codec::Protobuf` without the feature; never a value.
    #[cfg(not(feature = "protobuf"))]
    #[derive(Debug)]
    pub enum Protobuf {}
    #[cfg(not(feature = "protobuf"))]
    impl<T> Codec<T> for Protobuf {
        fn encode(_: &T) -> Result<Vec<u8>, CodecError> {
            Err(CodecError::new("the `protobuf` feature of retry-kafka is off"))
        }
        fn decode(_: &[u8]) -> Result<T, CodecError> {
            Err(CodecError::new("the `protobuf` feature of retry-kafka is off"))
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

#[cfg(test)]
mod tests {
    use super::codec::{Json, Raw};
    use super::{Codec, RawPayload};
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        note: String,
    }

    fn order() -> Order {
        Order {
            id: 7,
            note: "gift".into(),
        }
    }

    #[test]
    fn json_round_trips_and_refuses_what_is_not_one_json_value() {
        let bytes = Json::encode(&order()).unwrap();
        assert_eq!(bytes, br#"{"id":7,"note":"gift"}"#);
        assert_eq!(<Json as Codec<Order>>::decode(&bytes).unwrap(), order());
        for bad in [&b"\xff\xfe"[..], br#"{"id":7}"#, br#"{"id":7,"note":"a"} x"#] {
            assert!(<Json as Codec<Order>>::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_writes_named_fields_and_reads_both_struct_forms() {
        use super::codec::MsgPack;
        let bytes = MsgPack::encode(&order()).unwrap();
        // fixmap of 2, "id" => 7, "note" => "gift": field names on the wire.
        assert_eq!(bytes, b"\x82\xa2id\x07\xa4note\xa4gift");
        assert_eq!(<MsgPack as Codec<Order>>::decode(&bytes).unwrap(), order());
        // A producer writing fields by position (`rmp_serde::to_vec`) is read too.
        let positional = rmp_serde::to_vec(&order()).unwrap();
        assert_eq!(positional[0], 0x92, "an array of 2");
        assert_eq!(<MsgPack as Codec<Order>>::decode(&positional).unwrap(), order());
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_refuses_json_reserved_bytes_and_trailing_bytes() {
        use super::codec::MsgPack;
        let decode = <MsgPack as Codec<Order>>::decode;
        assert!(
            decode(br#"{"id":7,"note":"gift"}"#).is_err(),
            "JSON is not MessagePack"
        );
        assert!(decode(b"\xc1").is_err(), "0xc1 is never used");
        assert!(decode(b"").is_err());
        let mut trailing = MsgPack::encode(&order()).unwrap();
        trailing.push(0x00);
        assert_eq!(
            decode(&trailing).unwrap_err().to_string(),
            "codec error: 1 bytes after the MessagePack value"
        );
    }

    #[cfg(feature = "protobuf")]
    #[derive(Clone, PartialEq, prost::Message)]
    struct ProtoOrder {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(string, tag = "2")]
        note: String,
    }

    /// `ProtoOrder` with a field added later (tag 3).
    #[cfg(feature = "protobuf")]
    #[derive(Clone, PartialEq, prost::Message)]
    struct ProtoOrderV2 {
        #[prost(uint64, tag = "1")]
        id: u64,
        #[prost(string, tag = "2")]
        note: String,
        #[prost(uint32, tag = "3")]
        quantity: u32,
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_round_trips_and_skips_fields_it_does_not_know() {
        use super::codec::Protobuf;
        let order = ProtoOrder {
            id: 7,
            note: "gift".into(),
        };
        let bytes = Protobuf::encode(&order).unwrap();
        assert_eq!(bytes, b"\x08\x07\x12\x04gift");
        assert_eq!(<Protobuf as Codec<ProtoOrder>>::decode(&bytes).unwrap(), order);
        let newer = Protobuf::encode(&ProtoOrderV2 {
            id: 7,
            note: "gift".into(),
            quantity: 3,
        })
        .unwrap();
        assert_eq!(<Protobuf as Codec<ProtoOrder>>::decode(&newer).unwrap(), order);
    }

    #[cfg(feature = "protobuf")]
    #[test]
    fn protobuf_refuses_truncated_fields_and_invalid_wire_types() {
        use super::codec::Protobuf;
        let decode = <Protobuf as Codec<ProtoOrder>>::decode;
        assert!(decode(b"\x08\x07\x12\x04gi").is_err(), "a string cut short");
        assert!(decode(b"\x0f").is_err(), "wire type 7 does not exist");
        assert!(decode(b"\x08\xff\xff").is_err(), "a varint cut short");
        // Field 2 is a string: the wrong wire type for it is refused, not skipped.
        assert!(decode(b"\x10\x01").is_err());
    }

    #[test]
    fn raw_text_is_utf8_checked_and_raw_bytes_take_anything() {
        let line = String::from("GET / 200");
        assert_eq!(Raw::encode(&line).unwrap(), b"GET / 200");
        assert_eq!(<Raw as Codec<String>>::decode(b"GET / 200").unwrap(), line);
        assert_eq!(
            <Raw as Codec<String>>::decode(b"ok\xff").unwrap_err().to_string(),
            "codec error: invalid utf-8 sequence of 1 bytes from index 2"
        );
        let binary: &[u8] = b"\xff\x00\xfe";
        assert_eq!(<Raw as Codec<Bytes>>::decode(binary).unwrap(), binary);
        assert_eq!(<Raw as Codec<Vec<u8>>>::decode(binary).unwrap(), binary);
        assert_eq!(Raw::encode(&Bytes::from_static(binary)).unwrap(), binary);
        assert_eq!(Raw::encode(&binary.to_vec()).unwrap(), binary);
        assert!(<Raw as Codec<Bytes>>::decode(b"").unwrap().is_empty());
        assert_eq!(String::from_payload(b"").unwrap(), "");
    }
}
