use std::io::IsTerminal;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(airavata::cli::DEFAULT_LOG_FILTER)
            }),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs piped to a file or a
        // collector stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    airavata::cli::main()
}
