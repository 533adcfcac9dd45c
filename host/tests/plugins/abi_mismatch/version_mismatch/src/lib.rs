//! A module whose library header says it was built against plugin-api 0.4.0.
//!
//! `modhost_plugin_api::export_module!` records the plugin-api version the library was
//! compiled with. This fixture exports the module constructor `export_module!` would
//! use, under a root-module type of its own whose version strings say `0.4.0`: what a
//! library built against plugin-api 0.4 reports. abi_stable checks that version before
//! the type layout (which differs too, the root type being this crate's own), so the
//! host must refuse the library with its "built against plugin-api 0.4.0" message.
//!
//! Built as the `newer_minor` package, it reports 1.99.0 instead, which the host refuses
//! before abi_stable's own checks, as newer than its own minor.

// abi_stable's derive generates impls inside a const block.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::{RootModule, RootModuleResult},
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings,
    std_types::{RResult, RString},
    StableAbi,
};
use modhost_plugin_api::{ffi::FfiModuleBox, prelude::*};

/// The plugin-api version this library claims to be built against.
#[cfg(not(feature = "newer_minor"))]
pub const REPORTED_PLUGIN_API_VERSION: &str = "0.4.0";
/// Built as the `newer_minor` package: a newer 1.x minor than any host has.
#[cfg(feature = "newer_minor")]
pub const REPORTED_PLUGIN_API_VERSION: &str = "1.99.0";

#[derive(Default)]
pub struct OldApi;

impl Module for OldApi {
    async fn init(&self, _ctx: &mut InitContext) -> Result<()> {
        Ok(())
    }
}

/// The same shape as `modhost_plugin_api::ffi::ModuleRoot`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OldRootRef)))]
#[sabi(missing_field(panic))]
pub struct OldRoot {
    #[sabi(last_prefix_field)]
    pub new_module: extern "C" fn() -> RResult<FfiModuleBox, RString>,
}

impl RootModule for OldRootRef {
    declare_root_module_statics! {OldRootRef}
    const BASE_NAME: &'static str = "modhost_module";
    const NAME: &'static str = "modhost_module";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(REPORTED_PLUGIN_API_VERSION);
}

extern "C" fn new_module() -> RResult<FfiModuleBox, RString> {
    (modhost_plugin_api::__private::root_module::<OldApi>().new_module())()
}

fn root() -> OldRootRef {
    OldRoot { new_module }.leak_into_prefix()
}

/// What `export_module!` exports, with `OldRootRef`'s version strings.
#[doc(hidden)]
#[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
pub static ROOT_MODULE_LOADER: modhost_plugin_api::__private::LibHeader = {
    extern "C" fn load() -> RootModuleResult {
        modhost_plugin_api::__private::__call_root_module_loader(root)
    }
    // SAFETY: `load` returns the root module type named here.
    unsafe {
        modhost_plugin_api::__private::LibHeader::from_constructor::<OldRootRef>(
            load,
            modhost_plugin_api::__private::CheckTypeLayout::Yes,
        )
    }
};
