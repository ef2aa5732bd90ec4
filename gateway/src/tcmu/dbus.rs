//! The handler registration targetcli looks for: the name `org.kernel.TCMUService1` on the
//! system bus, an ObjectManager at `/org/kernel/TCMUService1`, and a handler object at
//! `/org/kernel/TCMUService1/pangate` whose `CheckConfig` judges a backstore's config
//! string before targetcli creates the backstore. This is the interface tcmu-runner offers,
//! so `targetcli /backstores/user:pangate create …` works without it.

use std::sync::Arc;

/// The well-known name targetcli asks for.
pub const SERVICE: &str = "org.kernel.TCMUService1";
/// Where the ObjectManager lives.
pub const ROOT: &str = "/org/kernel/TCMUService1";
/// The handler object (its last component is the handler name, `user:pangate`).
pub const HANDLER: &str = "/org/kernel/TCMUService1/pangate";

/// Decides whether a config string (`pangate/<pan>/<node>/<target>/<lun>`) names a LUN
/// pangate serves; the error says why not.
pub type ConfigCheck = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Handler {
    check: ConfigCheck,
}

#[zbus::interface(name = "org.kernel.TCMUService1")]
impl Handler {
    /// Whether `config` is valid, and why not.
    fn check_config(&self, config: &str) -> (bool, String) {
        match (self.check)(config) {
            Ok(()) => (true, "ok".into()),
            Err(why) => (false, why),
        }
    }

    /// The handler's name.
    #[zbus(property)]
    fn name(&self) -> String {
        "pangate".into()
    }

    /// The handler's subtype, as in the config string's first component.
    #[zbus(property)]
    fn subtype(&self) -> String {
        "pangate".into()
    }

    /// What targetcli prints for `help create`.
    #[zbus(property)]
    fn config_desc(&self) -> String {
        "<pan>/<node>/<target>/<lun>: a LUN in the map of a node of the running pangate gateway, \
         e.g. demo/node-a/0/0; the size must be the LUN's"
            .into()
    }
}

/// The registration; dropped, it leaves the bus.
pub struct Registration {
    _conn: zbus::blocking::Connection,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registration")
    }
}

/// Registers on the system bus, or on the bus at `address` (tests use a private one).
pub fn register(address: Option<&str>, check: ConfigCheck) -> zbus::Result<Registration> {
    let builder = match address {
        Some(a) => zbus::blocking::connection::Builder::address(a)?,
        None => zbus::blocking::connection::Builder::system()?,
    };
    let conn = builder
        .serve_at(ROOT, zbus::fdo::ObjectManager)?
        .serve_at(HANDLER, Handler { check })?
        .name(SERVICE)?
        .build()?;
    Ok(Registration { _conn: conn })
}
