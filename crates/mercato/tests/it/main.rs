//! End-to-end tests over HTTP: the all-in-one application, and the distributed mode (every
//! service its own process) in `distributed`.

mod accounts;
mod addresses;
mod admin;
mod binary;
mod cart;
mod catalog;
mod checkout;
mod delivery;
mod distributed;
mod edge;
mod events;
mod faults;
mod helpers;
mod inventory;
mod jwt;
mod live;
mod logs;
mod postgres;
