//! The vendor profile (`vendor.toml`): how the suite gets its accounts and
//! rooms, and which optional hooks the vendor offers. Every key is documented
//! in the crate's README; unknown keys are refused by name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// A parsed profile. All keys are optional, but one way to get accounts must
/// be given: `admin_token`/`admin_token_env`, `[fixtures]`, or
/// `provision_command`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The server's base URL; `--target` overrides it.
    pub target: Option<String>,
    /// A bearer token of a Persistent Chat administrator (way a).
    pub admin_token: Option<String>,
    /// The name of an environment variable holding that token.
    pub admin_token_env: Option<String>,
    /// A file holding that token (relative to the working directory).
    pub admin_token_file: Option<std::path::PathBuf>,
    /// A shell command that prints the fixtures as JSON (way c). It gets the
    /// run's namespace in `PCHAT_CONFORMANCE_NAMESPACE`.
    pub provision_command: Option<String>,
    /// Pre-made accounts and their category (way b).
    pub fixtures: Option<Fixtures>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Declares a deployment of several pools (§17).
    pub pools: Option<Pools>,
    #[serde(default)]
    pub run: RunOptions,
}

/// Pre-made accounts: the same shape the provisioning command prints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// A category in whose scope all four users are, with `manager` among its
    /// creators; the suite creates its rooms there.
    pub category: u64,
    /// `manager`, `presenter`, `member`, `outsider` (all required).
    pub users: BTreeMap<String, Account>,
}

/// One pre-made account: a token, or a password to sign in with (or both).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub name: String,
    pub password: Option<String>,
    pub token: Option<String>,
}

/// Optional hooks. Declaring one declares the feature: a test of a declared
/// feature that cannot run is an error, not a skip.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Kills the server abruptly (SIGKILL) and starts it again on the same
    /// address and data; the suite then waits for `/healthz`.
    pub restart: Option<String>,
    /// Exports pending compliance records and prints every record exported so
    /// far as JSON lines (the `.jsonl` format of PC-14.3a) on stdout.
    pub compliance_export: Option<String>,
}

/// A deployment of several pools: declaring it makes PC-17.1a apply.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    /// The id of an existing room homed in a pool other than the target's.
    pub foreign_room: u64,
}

/// Knobs of a run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// The longest a single test may wait for a server-side timer (heartbeat,
    /// linger). Tests needing longer are reported not-possible.
    #[serde(default = "default_max_wait")]
    pub max_wait_s: u64,
    /// Seconds to wait for an expected event before calling it missing.
    #[serde(default = "default_event_wait")]
    pub event_wait_s: u64,
    /// Fixed namespace prefix instead of a random one.
    pub namespace: Option<String>,
    /// Seed of the randomised parts (history check, namespace).
    pub seed: Option<u64>,
    /// History check size: concurrent clients, rooms, operations per client.
    #[serde(default = "default_clients")]
    pub history_clients: usize,
    #[serde(default = "default_rooms")]
    pub history_rooms: usize,
    #[serde(default = "default_ops")]
    pub history_ops: usize,
    /// Only run tests whose clause id or name contains one of these.
    #[serde(default)]
    pub only: Vec<String>,
}

fn default_max_wait() -> u64 {
    130
}
fn default_event_wait() -> u64 {
    5
}
fn default_clients() -> usize {
    4
}
fn default_rooms() -> usize {
    3
}
fn default_ops() -> usize {
    40
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            max_wait_s: default_max_wait(),
            event_wait_s: default_event_wait(),
            namespace: None,
            seed: None,
            history_clients: default_clients(),
            history_rooms: default_rooms(),
            history_ops: default_ops(),
            only: Vec::new(),
        }
    }
}

impl Profile {
    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> anyhow::Result<Profile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        Profile::parse(&text).with_context(|| format!("bad profile {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Profile> {
        let p: Profile = toml::from_str(text)?;
        if p.admin_token.is_none()
            && p.admin_token_env.is_none()
            && p.admin_token_file.is_none()
            && p.fixtures.is_none()
            && p.provision_command.is_none()
        {
            anyhow::bail!(
                "the profile gives no way to get accounts: set admin_token (or admin_token_env, admin_token_file), [fixtures], or provision_command"
            );
        }
        Ok(p)
    }

    /// The administrator token, from the file or the named variable.
    pub fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.admin_token {
            return Ok(Some(t.clone()));
        }
        if let Some(path) = &self.admin_token_file {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read admin_token_file {}", path.display()))?;
            return Ok(Some(t.trim().to_owned()));
        }
        match &self.admin_token_env {
            Some(var) => std::env::var(var)
                .map(Some)
                .with_context(|| format!("admin_token_env names {var}, which is not set")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_needs_a_way_to_get_accounts() {
        let err = Profile::parse("[hooks]\nrestart = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("no way to get accounts"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Profile::parse("admin_token = \"t\"\nadmin_tokn = \"t\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("admin_tokn"), "{err:#}");
    }

    #[test]
    fn fixtures_and_hooks_parse() {
        let p = Profile::parse(
            r#"
target = "http://chat.example:8080"
[fixtures]
category = 3
users.manager = { name = "m", password = "pw" }
users.presenter = { name = "p", token = "t" }
users.member = { name = "u", token = "t" }
users.outsider = { name = "o", token = "t" }
[hooks]
restart = "systemctl restart chat"
[run]
max_wait_s = 10
"#,
        )
        .unwrap();
        let f = p.fixtures.unwrap();
        assert_eq!(f.category, 3);
        assert_eq!(f.users["manager"].password.as_deref(), Some("pw"));
        assert_eq!(p.run.max_wait_s, 10);
        assert_eq!(p.run.history_clients, 4);
        assert!(p.hooks.restart.is_some());
    }
}
