//! Every accepted form of #[derive(Event)].

use retry_kafka::prelude::*;
use retry_kafka::event::{Codec, CodecError};
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "orders", key = "order_id")]
struct Keyed {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "tenants", key = "0", name = "TenantRenamed.v2")]
struct Tuple(String, u32);

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "audit")]
enum Audit {
    Login { user: String },
    Logout,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "generic.things", key = "id")]
struct Generic<T> {
    id: String,
    value: T,
}

/// Text events with a hand-written codec.
struct Text;

impl Codec<Line> for Text {
    fn encode(value: &Line) -> Result<Vec<u8>, CodecError> {
        Ok(value.0.clone().into_bytes())
    }
    fn decode(bytes: &[u8]) -> Result<Line, CodecError> {
        String::from_utf8(bytes.to_vec()).map(Line).map_err(CodecError::new)
    }
}

#[derive(Event, Debug, PartialEq)]
#[event(topic = "lines", codec = Text)]
struct Line(String);

fn roundtrip<E: Event + std::fmt::Debug + PartialEq>(event: E) {
    let bytes = event.encode().unwrap();
    assert_eq!(E::decode(&bytes).unwrap(), event);
}

fn main() {
    assert_eq!(Keyed { order_id: 42 }.key().as_deref(), Some(&b"42"[..]));
    assert_eq!(Keyed::TYPE_NAME, "Keyed");

    assert_eq!(Tuple::TOPIC, "tenants");
    assert_eq!(Tuple::TYPE_NAME, "TenantRenamed.v2");
    assert_eq!(Tuple("acme".into(), 1).key().as_deref(), Some(&b"acme"[..]));

    assert_eq!(Audit::Logout.key(), None);
    roundtrip(Audit::Login { user: "ann".into() });

    let generic = Generic { id: "g-1".into(), value: vec![1u8, 2] };
    assert_eq!(generic.key().as_deref(), Some(&b"g-1"[..]));
    assert_eq!(Generic::<Vec<u8>>::TOPIC, "generic.things");
    roundtrip(generic);

    assert_eq!(Line("hello".into()).encode().unwrap(), b"hello");
    roundtrip(Line("hello".into()));
}
