//! The delivery service: a shipment per paid or cash-on-delivery order with the address
//! snapshot, delivery agents with their service areas, assignment (automatic to the
//! least-loaded agent serving the city, or by an admin), the one state machine every status
//! change goes through, proof of delivery by a one-time code, and tracking for the customer.

pub mod api;
pub mod domain;
pub mod events;
pub mod service;
pub mod store;

pub use api::{router, DeliveryApi, PUBLIC_ROUTES};
pub use events::{OrderShipments, ORDER_EVENTS, SHIPMENT_EVENTS};
pub use service::{AgentDirectory, Delivery, DirectoryUser, Settings, SERVICE};
