//! The one rule for tests that read real data from `$AIRAVATA_ASSETS`.
//!
//! A missing asset (the variable unset, the folder absent, or a file missing
//! from it) skips the test with a `skipped …` line, except in CI: when `CI` is
//! set and `AIRAVATA_ASSETS` names a folder, a missing asset fails the test,
//! so a CI run can never pass by skipping what it was meant to check.
//!
//! Test binaries that do not include `common` take this file alone with
//! `#[path = "common/assets.rs"] mod assets;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What a missing asset means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Print `skipped …` and return early.
    Skip,
    /// Panic: the run promised the assets.
    Fail,
}

/// Whether a value of `CI` means CI: set to something other than empty, `0`
/// or `false` (`common::in_ci` reads the variable).
pub fn ci_value_means_ci(ci: Option<&OsStr>) -> bool {
    ci.is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The rule, from the values of `CI` and `AIRAVATA_ASSETS`.
pub fn missing_means(ci: Option<&OsStr>, assets: Option<&OsStr>) -> Missing {
    let ci = ci_value_means_ci(ci);
    let named = assets.is_some_and(|v| !v.is_empty());
    if ci && named {
        Missing::Fail
    } else {
        Missing::Skip
    }
}

fn missing(test: &str, what: &str) -> Option<PathBuf> {
    let ci = std::env::var_os("CI");
    let assets = std::env::var_os("AIRAVATA_ASSETS");
    match missing_means(ci.as_deref(), assets.as_deref()) {
        Missing::Fail => panic!(
            "{test}: {what}; CI is set and AIRAVATA_ASSETS names a folder, so this is a failure, not a skip"
        ),
        Missing::Skip => {
            eprintln!("skipped {test}: {what}");
            None
        }
    }
}

/// The `$AIRAVATA_ASSETS` folder, or `None` (skip) / panic (CI) when absent.
pub fn assets(test: &str) -> Option<PathBuf> {
    match std::env::var_os("AIRAVATA_ASSETS") {
        Some(p) if Path::new(&p).is_dir() => Some(PathBuf::from(p)),
        Some(p) if !p.is_empty() => missing(
            test,
            &format!("AIRAVATA_ASSETS={} is not a directory", p.to_string_lossy()),
        ),
        _ => missing(test, "AIRAVATA_ASSETS not set"),
    }
}

/// The file `rel` under `$AIRAVATA_ASSETS`, under the same rule.
pub fn asset(test: &str, rel: &str) -> Option<PathBuf> {
    let p = assets(test)?.join(rel);
    if p.exists() {
        Some(p)
    } else {
        missing(test, &format!("{} is missing", p.display()))
    }
}

#[test]
fn missing_assets_fail_only_in_ci_with_a_folder_named() {
    let s = |v: &'static str| Some(OsStr::new(v));
    assert_eq!(missing_means(s("true"), s("/data/assets")), Missing::Fail);
    assert_eq!(missing_means(s("1"), s("../shared/assets")), Missing::Fail);
    assert_eq!(missing_means(None, s("/data/assets")), Missing::Skip);
    assert_eq!(missing_means(s("true"), None), Missing::Skip);
    assert_eq!(missing_means(s("true"), s("")), Missing::Skip);
    assert_eq!(missing_means(s("false"), s("/data/assets")), Missing::Skip);
}
