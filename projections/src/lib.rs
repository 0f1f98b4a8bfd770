//! Projections: read models that replay deterministically from the log, and
//! the side-effect projectors (PDF, mail) that keep a durable checkpoint and
//! never run during a rebuild.

pub mod einvoice;
pub mod locale;
pub mod logo;
pub mod mail;
pub mod pdf;
pub mod postings;
pub mod read_models;

pub use read_models::{InvoiceRecord, IssuedHead, ReadModels, StatusChange};
