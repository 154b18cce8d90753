//! Sets GATEWAY_REVISION (gateway_build_info, /stats, `--version`) to
//! `git describe --always --dirty` of the checkout, or "unknown" when the
//! source is not a git checkout (a source package) or git is missing.

use std::process::Command;

fn main() {
    let rev = Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=GATEWAY_REVISION={rev}");
    // Again when HEAD moves (a commit, a checkout); not for every edit of
    // the work tree, so "-dirty" may lag until the next commit.
    for p in ["../.git/HEAD", "../.git/index"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
