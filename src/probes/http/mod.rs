//! The `http` probe (in progress): HTTP/1.x exchanges seen at the syscall layer.
//! This folder holds, so far, the user-space framing of captured connection bytes.

pub mod conn;
pub mod parser;
