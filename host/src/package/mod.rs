//! Module packages, before the pipeline: [`create`] turns a vendor's module crate into an
//! installable package (`modhost package`), and [`install`] checks a package and moves it
//! into a modules directory (`modhost install`).
//!
//! A package is a module folder (`module.yaml`, the library, `migrations/`, and
//! `module.sig` when signed), or a `.tar.gz` holding one such folder.
//!
//! May use: `module` (manifest, discovery, signing, loader), the migrations folder's name
//! from `data`, `random` and `hex`. Must not use the runtime or HTTP layers: nothing here
//! runs a module.

pub mod create;
pub mod install;
