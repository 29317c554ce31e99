//! End-to-end tests of the all-in-one application over HTTP.

mod accounts;
mod addresses;
mod admin;
mod binary;
mod cart;
mod catalog;
mod checkout;
mod delivery;
mod edge;
mod events;
mod helpers;
mod inventory;
mod jwt;
mod live;
mod logs;
mod postgres;
