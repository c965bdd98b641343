//! OpenAI wire types, one file per resource. Only the fields the gateway reads are typed;
//! everything else stays in the client's bytes and is forwarded untouched.

pub mod chat;
pub mod completions;
pub mod models;
