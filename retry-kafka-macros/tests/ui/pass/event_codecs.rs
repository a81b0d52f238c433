//! Every codec of #[derive(Event)]: the short forms, the paths, prost's derive beside ours.

use retry_kafka::event::codec::{Json, MsgPack, Protobuf, Raw};
use retry_kafka::event::{Codec, CodecError, RawPayload};
use retry_kafka::prelude::*;
use retry_kafka::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "orders", key = "order_id", codec = "json")]
struct JsonOrder {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "orders", key = "order_id", codec = "msgpack")]
struct MsgPackOrder {
    order_id: u64,
}

#[derive(Event, Serialize, Deserialize, Debug, PartialEq)]
#[event(topic = "orders", codec = MsgPack)]
struct MsgPackByPath {
    order_id: u64,
}

#[derive(Event, Clone, PartialEq, prost::Message)]
#[event(topic = "orders", key = "order_id", codec = "protobuf")]
struct ProtoOrder {
    #[prost(uint64, tag = "1")]
    order_id: u64,
    #[prost(string, optional, tag = "2")]
    note: Option<String>,
}

/// A message with a string key, as prost-build writes it (attributes after the derive).
#[derive(Clone, PartialEq, Event, ::prost::Message)]
#[event(topic = "tenants", key = "tenant", codec = Protobuf, name = "TenantRenamed.v1")]
struct TenantRenamed {
    #[prost(string, tag = "1")]
    tenant: String,
}

#[derive(Event, Debug, PartialEq)]
#[event(topic = "lines", key = "0", codec = "raw")]
struct Line(String);

#[derive(Event, Debug, PartialEq)]
#[event(topic = "blobs", codec = "raw")]
struct Blob {
    bytes: Bytes,
}

#[derive(Event, Debug, PartialEq)]
#[event(topic = "chunks", codec = "raw")]
struct Chunk(Vec<u8>);

/// A generic newtype is a raw payload when its field is.
#[derive(Event, Debug, PartialEq)]
#[event(topic = "anything", codec = "raw")]
struct Payload<P>(P);

/// A type that is its own raw payload, with the codec by path.
#[derive(Event, Debug, PartialEq)]
#[event(topic = "upper", codec = Raw)]
struct Upper(String);

impl RawPayload for Upper {
    fn as_payload(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn from_payload(bytes: &[u8]) -> Result<Self, CodecError> {
        let text = String::from_payload(bytes)?;
        if text.chars().any(char::is_lowercase) {
            return Err(CodecError::new("lower case"));
        }
        Ok(Upper(text))
    }
}

fn roundtrip<E: Event + std::fmt::Debug + PartialEq>(event: E) {
    let bytes = event.encode().unwrap();
    assert_eq!(E::decode(&bytes).unwrap(), event);
}

fn main() {
    roundtrip(JsonOrder { order_id: 1 });
    assert_eq!(Json::encode(&JsonOrder { order_id: 1 }).unwrap(), br#"{"order_id":1}"#);
    roundtrip(MsgPackOrder { order_id: 2 });
    roundtrip(MsgPackByPath { order_id: 2 });
    let proto = ProtoOrder { order_id: 3, note: Some("gift".into()) };
    assert_eq!(proto.key().as_deref(), Some(&b"3"[..]));
    roundtrip(proto);
    let tenant = TenantRenamed { tenant: "acme".into() };
    assert_eq!(tenant.key().as_deref(), Some(&b"acme"[..]));
    assert_eq!(TenantRenamed::TYPE_NAME, "TenantRenamed.v1");
    roundtrip(tenant);

    let line = Line("GET / 200".into());
    assert_eq!(line.key().as_deref(), Some(&b"GET / 200"[..]));
    assert_eq!(line.encode().unwrap(), b"GET / 200");
    roundtrip(line);
    assert!(Line::decode(b"\xff").is_err());
    roundtrip(Blob { bytes: Bytes::from_static(b"\xff\x00") });
    roundtrip(Chunk(vec![0xff, 0]));
    roundtrip(Payload(String::from("text")));
    roundtrip(Payload(vec![1u8, 2]));
    roundtrip(Upper("LOUD".into()));
    assert!(Upper::decode(b"quiet").is_err());
    assert_eq!(<Raw as Codec<Upper>>::encode(&Upper("A".into())).unwrap(), b"A");
}
