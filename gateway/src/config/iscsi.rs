//! The iSCSI target's settings (`[iscsi]`) and the checks of them and of nodes' iSCSI
//! identities (`iqn`, CHAP secrets).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{err, Config, ConfigError, NodeConfig};

/// The iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    /// Portals (`address:port`); none turns iSCSI off.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Target names are `<prefix>:<pan>.t<target>`.
    #[serde(default = "default_target_prefix")]
    pub target_prefix: String,
    /// Connections (logged in or logging in) the gateway holds at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a connection has to finish its login; a silent initiator is pinged after
    /// this long, and dropped when it does not answer within as long again.
    #[serde(default = "default_login_timeout")]
    pub timeout_secs: u64,
}

fn default_login_timeout() -> u64 {
    15
}

fn default_target_prefix() -> String {
    "iqn.2026-12.io.pangate".into()
}

fn default_max_connections() -> usize {
    64
}

impl Default for IscsiConfig {
    fn default() -> Self {
        IscsiConfig {
            listen: Vec::new(),
            target_prefix: default_target_prefix(),
            max_connections: default_max_connections(),
            timeout_secs: default_login_timeout(),
        }
    }
}

/// Whether `name` is a well-formed iSCSI name (RFC 7143 4.2.7): `iqn.`, `eui.` or `naa.`,
/// at most 223 bytes, of lower-case letters, digits, `-`, `.` and `:`.
pub fn valid_iscsi_name(name: &str) -> bool {
    (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name.len() <= 223
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

impl Config {
    pub(super) fn validate_iscsi(&self) -> Result<(), ConfigError> {
        for (i, a) in self.iscsi.listen.iter().enumerate() {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return Err(err(
                    format!("iscsi.listen[{i}]"),
                    format!("{a:?} is not an address and port"),
                    "write it as \"127.0.0.1:3260\"",
                ));
            }
        }
        if !self.iscsi.target_prefix.starts_with("iqn.") || !valid_iscsi_name(&self.iscsi.target_prefix) {
            return Err(err(
                "iscsi.target_prefix",
                format!(
                    "{:?} is not an iqn. name of lower-case letters, digits, '-', '.' and ':'",
                    self.iscsi.target_prefix
                ),
                "use the form iqn.<yyyy-mm>.<reversed domain>, e.g. \"iqn.2026-12.com.example\"",
            ));
        }
        if !(1..=3600).contains(&self.iscsi.timeout_secs) {
            return Err(err("iscsi.timeout_secs", "must be 1-3600 seconds", "leave it out for 15"));
        }
        if self.iscsi.max_connections == 0 {
            return Err(err(
                "iscsi.max_connections",
                "0 would refuse every initiator",
                "allow at least 1 (the default is 64)",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_iscsi_identity<'a>(
        &self,
        nk: &str,
        node: &'a NodeConfig,
        iqns: &mut HashSet<&'a str>,
    ) -> Result<(), ConfigError> {
        if let Some(iqn) = &node.iqn {
            if !valid_iscsi_name(iqn) {
                return Err(err(
                    format!("{nk}.iqn"),
                    format!("{iqn:?} is not an iSCSI name"),
                    "use the form iqn.<yyyy-mm>.<reversed domain>:<name>, in lower case",
                ));
            }
            if !iqns.insert(iqn.as_str()) {
                return Err(err(
                    format!("{nk}.iqn"),
                    format!("{iqn:?} belongs to two nodes"),
                    "give each node its own iqn",
                ));
            }
        }
        for (key, secret) in [("chap_secret", &node.chap_secret), ("mutual_chap_secret", &node.mutual_chap_secret)] {
            let Some(secret) = secret else { continue };
            if node.iqn.is_none() {
                return Err(err(
                    format!("{nk}.{key}"),
                    "set on a node without an iqn",
                    "give the node an iqn, or drop the secret",
                ));
            }
            if secret.len() < 12 || secret.len() > 255 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    format!("{nk}.{key}"),
                    "not 12-255 printable ASCII characters (RFC 7143 asks for at least 96 bits)",
                    "use a random secret, e.g. `openssl rand -hex 8`",
                ));
            }
        }
        let initiator_secret = node.chap_secret.as_ref().unwrap_or(&node.credential);
        if node.mutual_chap_secret.as_ref() == Some(initiator_secret) {
            return Err(err(
                format!("{nk}.mutual_chap_secret"),
                "the same as the initiator's secret, which lets a reflection attack through",
                "use a different secret for each direction",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(iscsi: &str, node_a: &str, node_b: &str) -> Result<Config, ConfigError> {
        let text = format!(
            r#"serial = "pg-test"
data_dir = "/tmp/x"
{iscsi}
[[pan]]
name = "p1"
[[pan.image]]
name = "d0"
path = "d0.img"
size = "64MiB"
[[pan.node]]
name = "a"
credential = "0123456789abcdef0123"
{node_a}
[[pan.node]]
name = "b"
credential = "0123456789abcdef0124"
{node_b}
"#
        );
        Config::parse(&text, None)
    }

    #[test]
    fn iscsi_settings_and_identities_are_checked_with_the_key_that_is_wrong() {
        let ok = with("[iscsi]\nlisten = [\"127.0.0.1:3260\"]", "iqn = \"iqn.2026-12.t:a\"", "").unwrap();
        assert_eq!(ok.iscsi.target_prefix, "iqn.2026-12.io.pangate");
        assert_eq!(ok.iscsi.timeout_secs, 15);
        let cases = [
            ("[iscsi]\nlisten = [\"nowhere\"]", "", "", "iscsi.listen[0]"),
            ("[iscsi]\ntarget_prefix = \"eui.1234\"", "", "", "iscsi.target_prefix"),
            ("[iscsi]\ntimeout_secs = 0", "", "", "iscsi.timeout_secs"),
            ("[iscsi]\nmax_connections = 0", "", "", "iscsi.max_connections"),
            ("", "iqn = \"iqn.2026-12.T:Upper\"", "", "pan[0].node[0].iqn"),
            ("", "iqn = \"iqn.2026-12.t:x\"", "iqn = \"iqn.2026-12.t:x\"", "pan[0].node[1].iqn"),
            ("", "chap_secret = \"0123456789abcdef\"", "", "pan[0].node[0].chap_secret"),
            ("", "iqn = \"iqn.2026-12.t:a\"\nchap_secret = \"short\"", "", "pan[0].node[0].chap_secret"),
            (
                "",
                "iqn = \"iqn.2026-12.t:a\"\nmutual_chap_secret = \"0123456789abcdef0123\"",
                "",
                "pan[0].node[0].mutual_chap_secret",
            ),
        ];
        for (iscsi, a, b, key) in cases {
            let e = with(iscsi, a, b).expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
    }
}
