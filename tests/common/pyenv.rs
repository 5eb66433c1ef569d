//! Python virtual environments for tests that drive a Python tool (the
//! official `openai` client, the Kubernetes schema validator), installed from
//! PyPI under the target directory and reused by later runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The python of venv `name` (under `CARGO_TARGET_TMPDIR`) in which
/// `python -c "import {import}"` succeeds, installing `packages` first when it
/// does not. `None` after printing `skipped: …` when the install fails outside
/// CI; a panic in CI.
///
/// Tests of one binary run in parallel and two `python3 -m venv` calls on one
/// folder fail ("File exists"), so each venv is made once per process, under
/// a lock; `--clear` rebuilds one left half-made by an interrupted run.
pub fn python_venv(test: &str, name: &str, packages: &[&str], import: &str) -> Option<PathBuf> {
    static MADE: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let result = made
        .entry(name.to_string())
        .or_insert_with(|| install(name, packages, import))
        .clone();
    match result {
        Ok(python) => Some(python),
        Err(why) if super::in_ci() => panic!("{test}: installing {packages:?} failed in CI: {why}"),
        Err(why) => {
            eprintln!("skipped: {test}: cannot install {packages:?} (PyPI unreachable?): {why}");
            None
        }
    }
}

fn install(name: &str, packages: &[&str], import: &str) -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let importable = || {
        Command::new(&python)
            .args(["-c", &format!("import {import}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if importable() {
        return Ok(python);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "-q"])
        .args(packages))?;
    if importable() {
        Ok(python)
    } else {
        Err(format!("`import {import}` fails after installing"))
    }
}
