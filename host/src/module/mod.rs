//! The module pipeline before anything runs: **find → check → resolve → load**.
//!
//! - find: [`discovery`] reads module folders and their [`manifest`]s;
//! - check: [`library_file`] (the library's bytes), [`signing`] (vendor signatures and
//!   `sha256:` pins), [`permissions`] (declared permissions, no duplicates);
//! - resolve: [`resolve`] orders modules by their dependencies;
//! - load: [`loader`] maps a library through abi_stable and checks its ABI;
//! - [`inspect`] strings them together for `modhost check`, `list` and `graph`.
//!
//! May use: nothing else of the host but `random` and `hex`. Everything here works on files and
//! values; it never calls a module's entry points, never touches a database and never
//! serves (loading a library does run its ELF constructors; the checks come first).

pub mod discovery;
pub mod inspect;
pub(crate) mod library_file;
pub mod loader;
pub mod manifest;
pub(crate) mod permissions;
pub mod resolve;
pub(crate) mod signing;
