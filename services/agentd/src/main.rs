//! agentd: the agent runtime inside a Colony container.
//!
//! It is the container's entrypoint (behind docker's `tini` init), listens on
//! `/run/colony/agent/agent.sock` and runs the worker's requests in `/workspace`
//! using the protocol of [`subjects::agent`]. This module owns the command
//! line, the runtime (one thread, so a fork bomb in a run cannot starve
//! agentd of threads) and the shutdown signals; [`server`] owns the socket
//! and [`proxy`] the egress proxy.

mod agent;
#[cfg(test)]
mod agent_tests;
mod chat;
mod files;
mod gateway;
mod group;
mod output;
mod proxy;
mod run;
mod server;
mod shell;
#[cfg(test)]
mod testutil;
mod tools;
mod workspace;

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use subjects::agent::{
    AGENT_SOCKET, AGENT_SUBDIR, GATEWAY_SOCKET, PROXY_ADDR, SOCKET_DIR, WORKSPACE,
};
use tokio::signal::unix::{signal, SignalKind};

/// agentd's version, reported in `pong`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
usage: agentd [--socket PATH] [--workspace DIR] [--gateway PATH] [--proxy ADDR|off] [--sweep]

  --socket PATH     unix socket to serve (env AGENTD_SOCKET; default /run/colony/agent/agent.sock)
  --workspace DIR   directory runs work in (env AGENTD_WORKSPACE; default /workspace)
  --gateway PATH    the worker's gateway socket (env AGENTD_GATEWAY; default /run/colony/gateway.sock)
  --proxy ADDR|off  where to serve the egress proxy, piped to the gateway; port 0 picks one,
                    off serves none (env AGENTD_PROXY; default 127.0.0.1:3128)
  --sweep           after every run, kill every other process of agentd's user (inside its
                    container only; refused as root) (env AGENTD_SWEEP=1)
  --help            print this and exit
  --version         print the version and exit";

/// Writes one line to stderr, ignoring a closed stderr (unlike `eprintln!`,
/// which panics).
pub fn log(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "agentd: {args}");
}

/// What agentd serves, from flags and environment.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    socket: PathBuf,
    workspace: PathBuf,
    gateway: PathBuf,
    /// `None`: no egress proxy.
    proxy: Option<SocketAddr>,
    /// Kill what a run leaves behind (see `group::sweep`).
    sweep: bool,
}

#[derive(Debug, PartialEq)]
enum Command {
    Serve(Config),
    Help,
    Version,
}

/// Parses the arguments (without the program name); flags win over the
/// `AGENTD_*` variables `env` looks up.
fn parse_args(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Command, String> {
    let mut config = Config {
        socket: env("AGENTD_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(SOCKET_DIR).join(AGENT_SUBDIR).join(AGENT_SOCKET)),
        workspace: env("AGENTD_WORKSPACE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(WORKSPACE)),
        gateway: env("AGENTD_GATEWAY")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(SOCKET_DIR).join(GATEWAY_SOCKET)),
        proxy: match env("AGENTD_PROXY") {
            Some(value) => parse_proxy(&value)?,
            None => Some(
                PROXY_ADDR
                    .parse()
                    .map_err(|err| format!("{PROXY_ADDR}: {err}"))?,
            ),
        },
        sweep: env("AGENTD_SWEEP").is_some_and(|v| v == "1"),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(OsString::from(value))),
            _ => (text, None),
        };
        match flag {
            "--help" | "-h" => return Ok(Command::Help),
            "--sweep" => {
                config.sweep = true;
                continue;
            }
            "--version" | "-V" => return Ok(Command::Version),
            "--socket" | "--workspace" | "--gateway" | "--proxy" => {}
            _ => return Err(format!("unknown argument {text:?}")),
        }
        let value = inline
            .or_else(|| args.next())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        match flag {
            "--socket" => config.socket = PathBuf::from(value),
            "--workspace" => config.workspace = PathBuf::from(value),
            "--gateway" => config.gateway = PathBuf::from(value),
            _ => config.proxy = parse_proxy(&value)?,
        }
    }
    Ok(Command::Serve(config))
}

/// `off`, or the proxy's `ip:port`.
fn parse_proxy(value: &std::ffi::OsStr) -> Result<Option<SocketAddr>, String> {
    let text = value.to_str().unwrap_or_default();
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("the proxy address must be ip:port or off, not {value:?}"))
}

fn main() -> ExitCode {
    let config = match parse_args(std::env::args_os().skip(1), |name| std::env::var_os(name)) {
        Ok(Command::Serve(config)) => config,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("agentd {VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            log(format_args!("{err}\n{USAGE}"));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log(format_args!("cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log(format_args!("{err}"));
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT.
async fn serve(config: Config) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let proxy_url = match config.proxy {
        None => None,
        Some(addr) => {
            let listener = proxy::bind(addr).await?;
            let addr = listener.local_addr()?;
            tokio::spawn(proxy::serve(listener, config.gateway.as_path().into()));
            Some(format!("http://{addr}"))
        }
    };
    let settings = run::Settings {
        workspace: config.workspace.clone(),
        gateway: config.gateway.clone(),
        proxy_url,
        sweep: config.sweep,
    };
    let proxy = settings
        .proxy_url
        .clone()
        .unwrap_or_else(|| "off".to_owned());
    let server = server::Server::bind(&config.socket, settings)?;
    log(format_args!(
        "{VERSION} listening on {} (workspace {}, gateway {}, egress proxy {proxy})",
        config.socket.display(),
        config.workspace.display(),
        config.gateway.display(),
    ));
    server
        .serve(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await;
    log(format_args!("stopped"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn config(socket: &str, workspace: &str) -> Config {
        Config {
            socket: PathBuf::from(socket),
            workspace: PathBuf::from(workspace),
            gateway: PathBuf::from("/run/colony/gateway.sock"),
            proxy: Some("127.0.0.1:3128".parse().expect("addr")),
            sweep: false,
        }
    }

    #[test]
    fn sweep_is_asked_for_by_flag_or_environment() {
        let swept = |c: Result<Command, String>| {
            matches!(c, Ok(Command::Serve(Config { sweep: true, .. })))
        };
        assert!(!swept(parse_args(args(&[]), |_| None)));
        assert!(swept(parse_args(args(&["--sweep"]), |_| None)));
        assert!(swept(
            parse_args(args(&[]), |n| (n == "AGENTD_SWEEP").then(|| "1".into()))
        ));
    }

    #[test]
    fn defaults_come_from_the_contract() {
        let parsed = parse_args(args(&[]), |_| None);
        assert_eq!(
            parsed,
            Ok(Command::Serve(config(
                "/run/colony/agent/agent.sock",
                "/workspace"
            )))
        );
    }

    #[test]
    fn flags_win_over_environment() {
        let env = |name: &str| match name {
            "AGENTD_SOCKET" => Some(OsString::from("/env/sock")),
            "AGENTD_WORKSPACE" => Some(OsString::from("/env/ws")),
            "AGENTD_GATEWAY" => Some(OsString::from("/env/gw.sock")),
            "AGENTD_PROXY" => Some(OsString::from("off")),
            _ => None,
        };
        assert_eq!(
            parse_args(
                args(&["--socket", "/flag/sock", "--proxy=127.0.0.1:0"]),
                env
            ),
            Ok(Command::Serve(Config {
                socket: PathBuf::from("/flag/sock"),
                workspace: PathBuf::from("/env/ws"),
                gateway: PathBuf::from("/env/gw.sock"),
                proxy: Some("127.0.0.1:0".parse().expect("addr")),
                sweep: false,
            }))
        );
        assert_eq!(
            parse_args(args(&["--gateway", "/g"]), env),
            Ok(Command::Serve(Config {
                socket: PathBuf::from("/env/sock"),
                workspace: PathBuf::from("/env/ws"),
                gateway: PathBuf::from("/g"),
                proxy: None,
                sweep: false,
            }))
        );
        assert_eq!(
            parse_args(args(&["--workspace=/w"]), |_| None),
            Ok(Command::Serve(config("/run/colony/agent/agent.sock", "/w")))
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(parse_args(args(&["--socket"]), |_| None).is_err());
        assert!(parse_args(args(&["--nope"]), |_| None).is_err());
        assert!(parse_args(args(&["--proxy", "localhost"]), |_| None).is_err());
        assert!(parse_args(args(&[]), |_| Some(OsString::from("nope"))).is_err());
        assert_eq!(parse_args(args(&["--help"]), |_| None), Ok(Command::Help));
    }
}
