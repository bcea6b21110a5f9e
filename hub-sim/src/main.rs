//! `hub-sim`: installs the rustls provider, parses the command line, runs it.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls CryptoProvider was already installed"))?;
    vworkspace_protocol::install_jwt_crypto();
    let (args, warnings) = hub_sim::cli::Args::parse_with_warnings();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUB_SIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    args.run().await
}
