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
    // Again when HEAD moves (a commit, a checkout): HEAD itself and the
    // branch file it names. Not the index, so staging files does not
    // rebuild; "-dirty" may lag until the next commit.
    let head = std::path::Path::new("../.git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed=../.git/HEAD");
        if let Some(r) = std::fs::read_to_string(head)
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
        {
            // The branch is a file of its own, or a line of packed-refs.
            for f in [format!("../.git/{r}"), "../.git/packed-refs".into()] {
                if std::path::Path::new(&f).exists() {
                    println!("cargo:rerun-if-changed={f}");
                }
            }
        }
    }
}
