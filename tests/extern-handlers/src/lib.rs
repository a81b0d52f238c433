//! Handlers in a crate of their own, as a larger program would have them. The binary that
//! runs them must reference this crate (`use extern_handlers as _;`) or the linker drops it.

use retry_kafka::prelude::*;
use serde::{Deserialize, Serialize};

/// A parcel left the warehouse.
#[derive(Event, Serialize, Deserialize, Debug)]
#[event(topic = "ext.shipments", key = "parcel")]
pub struct Shipped {
    /// The parcel's id.
    pub parcel: String,
}

/// Notifies the customer.
#[retry_handler(group = "ext-notify", retries = ["1s"], dlq)]
pub async fn notify(shipment: Shipped) -> Result<(), HandlerError> {
    if shipment.parcel.is_empty() {
        return Err(HandlerError::permanent("parcel without an id"));
    }
    Ok(())
}
