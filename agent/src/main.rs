//! `vworkspace-agent`: install the crypto provider, parse flags, run.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use clap::Parser;
use vworkspace_agent::process::logging;
use vworkspace_agent::runtime::cli;
use vworkspace_agent::{Agent, Args, Command, Redactor};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls CryptoProvider was already installed"))?;
    vworkspace_protocol::install_jwt_crypto();
    let args = Args::parse();
    let redactor = Redactor::new();
    logging::init(&args.log, &redactor)?;
    match args.command {
        Command::Run(run) => {
            let client = vworkspace_agent::kube_client(&run.kube).await?;
            let agent = Agent::build(run.into_config()?, client, redactor).await?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let mut task = tokio::spawn(agent.run(shutdown.clone()));
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = &mut task => return Ok(r??),
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("Shutting down");
            shutdown.cancel();
            tokio::select! {
                r = &mut task => Ok(r??),
                _ = term.recv() => anyhow::bail!("second signal; aborting"),
                _ = tokio::signal::ctrl_c() => anyhow::bail!("second signal; aborting"),
            }
        }
        Command::Join(join) => {
            let client = vworkspace_agent::kube_client(&join.kube).await?;
            print!("{}", cli::join(client, join).await?);
            Ok(())
        }
        Command::Status(status) => {
            let client = vworkspace_agent::kube_client(&status.kube).await?;
            let report = cli::status(client, &status).await?;
            print!("{}", cli::render(&report, status.output));
            Ok(())
        }
    }
}
