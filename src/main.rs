//! `pangate`: the control-node gateway. This file dispatches the command line; `up` is the
//! composition root, and each other subcommand has its own file.

mod bench;
mod mount;
mod net;
mod scsi_cmd;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use gateway::config::Config;
use gateway::ring::initiator::{ConnectOptions, Initiator};
use tracing_subscriber::EnvFilter;

/// Name of the config file pangate keeps in its data directory.
pub const CONFIG_NAME: &str = "pangate.toml";

#[derive(Debug, Parser)]
#[command(name = "pangate", version, about = "Control-node gateway for processing area networks")]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway. Without --config, uses DATA_DIR/pangate.toml, creating the
    /// embedded default there on first start.
    Up {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (images, socket, state). Defaults to $PANGATE_DATA_DIR or ./pangate-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start, check every LUN, flush and exit instead of serving until signalled.
        #[arg(long)]
        oneshot: bool,
        /// Which of the config's `[[gateway]]` entries this process is (redundant gateways).
        #[arg(long)]
        gateway: Option<u16>,
    },
    /// Validate a configuration file without starting anything.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Send one SCSI command to a LUN over the rings, in the spirit of sg3_utils.
    Scsi(scsi_cmd::ScsiArgs),
    /// Drive a LUN over the rings and report IOPS, bandwidth and latency as JSON.
    Bench(bench::BenchArgs),
    /// Mount a node's LUNs as files (t<target>-l<lun>) through FUSE.
    Mount(mount::MountArgs),
    /// Unmount a `pangate mount`.
    Umount(mount::UmountArgs),
    /// Inspect the virtual LANs of a running gateway.
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Print a shell completion script (bash: `pangate completions bash >
    /// /etc/bash_completion.d/pangate`; zsh: into a directory of $fpath as `_pangate`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as the Debian package installs it.
    #[command(hide = true)]
    Manpage,
}

/// How to reach the gateway as a node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// PAN name.
    #[arg(long)]
    pan: String,
    /// Node name.
    #[arg(long)]
    node: String,
    /// The node's credential; defaults to $PANGATE_CREDENTIAL, else the gateway's config.
    #[arg(long)]
    credential: Option<String>,
    /// Gateway socket; defaults to the one in the data directory's config (every
    /// gateway's, with redundant gateways). Give it once per gateway to use several.
    #[arg(long)]
    socket: Vec<PathBuf>,
    /// Data directory whose pangate.toml names the socket and credentials.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl NodeArgs {
    /// Connects one queue pair.
    pub fn connect(&self, slots: u32, data_bytes: u64) -> anyhow::Result<Initiator> {
        let (sockets, credential) = self.resolve()?;
        let opts = ConnectOptions {
            pan: self.pan.clone(),
            node: self.node.clone(),
            credential,
            slots,
            data_bytes,
            client: None,
        };
        // The first gateway that answers; with none up yet, the first is waited for.
        if sockets.len() > 1 {
            if let Some(i) = sockets.iter().find_map(|s| Initiator::connect(s, &opts).ok()) {
                return Ok(i);
            }
        }
        Ok(Initiator::connect_with_retry(&sockets[0], &opts, Duration::from_secs(5))?)
    }

    /// The gateway sockets (at least one) and the credential.
    pub fn resolve(&self) -> anyhow::Result<(Vec<PathBuf>, String)> {
        let credential = self.credential.clone().or_else(|| std::env::var("PANGATE_CREDENTIAL").ok());
        if let (false, Some(credential)) = (self.socket.is_empty(), &credential) {
            return Ok((self.socket.clone(), credential.clone()));
        }
        let dir = default_data_dir(self.data_dir.clone());
        let cfg = Config::load(&dir.join(CONFIG_NAME))
            .with_context(|| "give --socket and --credential, or --data-dir of a gateway whose config names them")?;
        let data_dir = cfg.data_dir_from(&dir);
        let sockets = match (self.socket.is_empty(), cfg.gateway_ids().as_slice()) {
            (false, _) => self.socket.clone(),
            (true, []) => vec![data_dir.join(&cfg.storage.socket)],
            (true, ids) => ids.iter().filter_map(|&id| cfg.gateway(id)).map(|g| data_dir.join(&g.socket)).collect(),
        };
        let credential = match credential {
            Some(c) => c,
            None => cfg
                .pans
                .iter()
                .filter(|p| p.name == self.pan)
                .flat_map(|p| &p.nodes)
                .find(|n| n.name == self.node)
                .map(|n| n.credential.clone())
                .with_context(|| format!("no node {:?} in PAN {:?} in {}", self.node, self.pan, dir.display()))?,
        };
        Ok((sockets, credential))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a terminal: logs piped to a file or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let result = match cli.command {
        Command::Up { config, data_dir, oneshot, gateway } => up::run(config, data_dir, oneshot, gateway),
        Command::CheckConfig { file } => check_config(&file),
        Command::Scsi(args) => scsi_cmd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => mount::umount(args),
        Command::Net(command) => net::run(command),
        Command::Completions { shell } => {
            // Generated whole first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "pangate", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(anyhow::Error::from)
        }
        Command::Manpage => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &page))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pangate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(file)?;
    let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    gateway::placement::check_config(&cfg, &cfg.data_dir_from(base)).map_err(|mut e| {
        e.file = Some(file.to_path_buf());
        e
    })?;
    let nodes: usize = cfg.pans.iter().map(|p| p.nodes.len()).sum();
    let images: usize = cfg.pans.iter().map(|p| p.images.len()).sum();
    let pans = cfg.pans.len();
    println!(
        "{}: ok ({})",
        file.display(),
        [(pans, "PAN"), (nodes, "node"), (images, "image")].map(|(n, what)| plural(n, what)).join(", ")
    );
    Ok(())
}

/// "1 PAN", "2 PANs".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn default_data_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("PANGATE_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("pangate-data"))
}
