//! Booting built images: the boot plan (written beside the image as `boot.json`, so
//! `beambake boot DIR` needs nothing else), the guest process type that owns a VM's
//! lifetime, and the qemu adapter.
//!
//! Must not: build images or run checks (see [`crate::smoke`]).

pub mod guest;
pub mod qemu;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::recipe::{Accel, Check, Machine, NetMode, SmokeCfg, Target};

pub const PLAN_FILE: &str = "boot.json";

/// Everything needed to boot one built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootPlan {
    pub name: String,
    pub target: Target,
    /// Paths relative to the plan's directory.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub machine: Machine,
    pub accel: Accel,
    /// qemu `-cpu` model; by default `qemu64` under TCG, `host` under KVM.
    #[serde(default)]
    pub cpu: Option<String>,
    pub net: NetPlan,
    /// `NAME@IP` when the guest runs distributed.
    pub node: Option<String>,
    /// File holding the cookie (mode 0600), relative to the plan's directory.
    pub cookie_file: Option<PathBuf>,
    pub checks: Vec<Check>,
    pub smoke: SmokeCfg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetPlan {
    pub mode: NetMode,
    pub guest: Ipv4Addr,
    pub prefix: u8,
    pub host: Ipv4Addr,
    pub hostname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Plan { path: PathBuf, message: String },
    #[error("{0}")]
    Qemu(String),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Net(String),
}

impl BootPlan {
    pub fn load(dir: &Path) -> Result<BootPlan, BootError> {
        let path = dir.join(PLAN_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BootError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| BootError::Plan {
            path,
            message: format!("not a beambake boot plan: {e}"),
        })
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn cookie(&self, dir: &Path) -> Result<Option<String>, BootError> {
        match &self.cookie_file {
            None => Ok(None),
            Some(f) => {
                let p = dir.join(f);
                std::fs::read_to_string(&p)
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|source| BootError::Io { path: p, source })
            }
        }
    }
}
