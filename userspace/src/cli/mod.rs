pub mod cni;
pub mod config;
pub mod ct;
pub mod gc;
pub mod monitor;
pub mod nat;
pub mod pod;
pub mod reset;
pub mod run;
pub mod sg;
pub mod stats;
pub mod status;
pub mod table;

use std::path::PathBuf;

use anyhow::Result;
use podgate::{
    control::{self, Answered, Request},
    pins::Pins,
};
use serde_json::Value;

/// How the CLI reaches the dataplane: the daemon's socket first, the pins when no daemon runs.
pub struct Ctl {
    pub pins: Pins,
    pub socket: PathBuf,
    /// The pin root given on the command line (or in the environment), sent with each request
    /// so that a daemon serving another root refuses it.
    pub explicit_root: Option<PathBuf>,
}

impl Ctl {
    /// Runs `req` through the daemon, or on the pins when none answers (mutations say so on
    /// stderr); requests only the daemon can serve fail with a message naming the socket.
    pub fn call(&self, req: Request) -> Result<(Value, Answered)> {
        let (v, answered) = control::dispatch(&self.socket, &self.pins, self.explicit_root.as_deref(), &req)?;
        if answered == Answered::Pins && req.mutates() {
            eprintln!("podgate: no daemon answers on {}; applied to the pinned maps directly", self.socket.display());
        }
        Ok((v, answered))
    }

    pub fn result(&self, req: Request) -> Result<Value> {
        Ok(self.call(req)?.0)
    }
}
