//! Customer channels: parsing and verifying what comes in, answering on the same channel.
//! Web chat is built; WhatsApp and Telegram follow the same shape.

pub mod webchat;
