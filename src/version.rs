//! Build facts embedded by build.rs.

/// Git revision of this source tree at build time ("unknown" outside git).
pub const GIT_REV: &str = env!("AIRAVATA_GIT_REV");
/// llama.cpp build number linked through llama-cpp-sys-2.
pub const LLAMA_CPP_BUILD: &str = env!("AIRAVATA_LLAMA_CPP_BUILD");
/// llama-cpp-sys-2 crate version.
pub const LLAMA_CPP_SYS_VERSION: &str = env!("AIRAVATA_LLAMA_CPP_SYS_VERSION");

/// One-line version string for `--version` and /info.
pub fn long_version() -> String {
    format!(
        "{} (git {}, llama.cpp b{}, llama-cpp-sys-2 {})",
        env!("CARGO_PKG_VERSION"),
        GIT_REV,
        LLAMA_CPP_BUILD,
        LLAMA_CPP_SYS_VERSION
    )
}

/// `--version` text for clap.
pub const CLAP_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("AIRAVATA_GIT_REV"),
    ", llama.cpp b",
    env!("AIRAVATA_LLAMA_CPP_BUILD"),
    ", llama-cpp-sys-2 ",
    env!("AIRAVATA_LLAMA_CPP_SYS_VERSION"),
    ")"
);
