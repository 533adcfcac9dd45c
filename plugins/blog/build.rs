//! Generates `permissions::*` constants from module.yaml.

fn main() -> Result<(), String> {
    modhost_plugin_api::build::generate_permissions()
}
