//! The minimal image's SSH server and client: dropbear built from Debian's own source package
//! (the version of the `dropbear-bin` the image installs, Debian's patches applied), linked
//! statically, with its X25519 and Ed25519 (TweetNaCl-derived) replaced by libsodium's
//! (`dropbear-curve25519.c`, Debian's `libsodium-dev`) and its random pool seeded from the
//! kernel's CRNG alone (`dropbear-seedrandom.patch`).
//!
//! Why, measured under TCG: Debian's dynamically linked dropbear takes ~42 ms of a minimal
//! guest's CPU to start (the loader: 4 libraries, ~2000 relocations), the static one 7 ms;
//! and TweetNaCl's curve arithmetic was over a quarter of an SSH login's guest CPU (an
//! ed25519 user key costs a login 66 ms, an RSA one 50 ms, with Debian's).
//!
//! The source comes through apt like every package (`apt-get source --download-only`, with a
//! `deb-src` copy of the host's Debian sources in a private apt state dir, so the host's own
//! lists are left alone). Cached as `CACHE/dropbear/<version>-<build key>/`; a new Debian
//! version, libsodium version or recipe gives a new build key and so a new minimal image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use sha2::Digest;

use super::{
    apt_env, build_into, download, extract, is_complete, package_version, run, Progress, BUILDER_VERSION,
    HOST_DEBIAN_SOURCES,
};

/// The programs built, and where the minimal image has them.
pub(super) const PROGRAMS: [(&str, &str); 3] =
    [("dropbear", "usr/sbin/dropbear"), ("dbclient", "usr/bin/dbclient"), ("dropbearkey", "usr/bin/dropbearkey")];

/// libsodium in place of TweetNaCl (see the file's own comment).
const CURVE25519_C: &str = include_str!("dropbear-curve25519.c");

/// Strato's patch, after Debian's: the random pool seeded from the kernel's CRNG alone, not
/// also from nine /proc files (`/proc/timer_list`, `/proc/interrupts`, ...) read and
/// formatted at each connection (measured: ~1000 more TCG blocks for a restored guest's first
/// login, and their run at every login).
const SEEDRANDOM_PATCH: &str = include_str!("dropbear-seedrandom.patch");

/// Added to Debian's `localoptions.h`: the faster code paths (a few KiB more), and no
/// password logins (the image has no passwords: keys only).
const LOCAL_OPTIONS: &str = "\n/* Strato */\n#define DROPBEAR_SMALL_CODE 0\n#define DROPBEAR_SVR_PASSWORD_AUTH 0\n";

/// What a build is made of: the source version (Debian's `dropbear-bin` candidate) and the
/// build key (that version, the libsodium it links and the recipe).
pub(super) struct Recipe {
    pub version: String,
    pub key: String,
}

impl Recipe {
    pub fn current() -> anyhow::Result<Recipe> {
        let version = package_version("dropbear-bin")?;
        let sodium = package_version("libsodium-dev")?;
        let recipe = hex::encode(
            &sha2::Sha256::digest(format!("{CURVE25519_C}\n{LOCAL_OPTIONS}\n{SEEDRANDOM_PATCH}").as_bytes())[..6],
        );
        let key = format!("v{BUILDER_VERSION} dropbear={version} libsodium-dev={sodium} recipe={recipe}");
        Ok(Recipe { version, key })
    }
}

/// Builds the programs, or finds them in the cache; returns their directory. The caller
/// holds the cache lock (`lock_cache`).
pub(super) fn build(cache: &Path, recipe: &Recipe, progress: &dyn Progress) -> anyhow::Result<PathBuf> {
    let Recipe { version, key } = recipe;
    let short = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..4]);
    let root = cache.join("dropbear");
    let dir = root.join(format!("{version}-{short}"));
    if is_complete(&dir, key) {
        return Ok(dir);
    }
    let tmp = root.join(format!("{version}.tmp"));
    build_into(&tmp, &dir, key, "building dropbear", || {
        progress.step(&format!("dropbear: downloading Debian's source of {version} and libsodium-dev"));
        let src = fetch_source(&tmp, version)?;
        let debs = download(cache, &["libsodium-dev".to_owned()])?;
        let sodium = tmp.join("sodium");
        for d in &debs {
            extract(d, &sodium)?;
        }
        progress.step("dropbear: patching (Debian's patches, Strato's, then libsodium's curve25519)");
        apply_debian_patches(&src)?;
        let ours = src.join("strato-seedrandom.patch");
        std::fs::write(&ours, SEEDRANDOM_PATCH)?;
        apply_patch(&src, &ours, "applying Strato's seedrandom patch")?;
        std::fs::write(src.join("curve25519.c"), CURVE25519_C)?;
        let mut options = std::fs::read_to_string(src.join("debian/localoptions.h")).unwrap_or_default();
        options.push_str(LOCAL_OPTIONS);
        std::fs::write(src.join("localoptions.h"), options)?;
        progress.step("dropbear: configuring and compiling (static, about 20 s)");
        let include = sodium.join("usr/include");
        let lib = sodium.join("usr/lib/x86_64-linux-gnu");
        run(
            "configuring dropbear",
            Command::new("./configure")
                .args(["--enable-static", "--disable-zlib"])
                .env("CFLAGS", format!("-O2 -I{}", include.display()))
                .env("LDFLAGS", format!("-L{}", lib.display()))
                .env("LIBS", "-lsodium")
                .current_dir(&src),
        )?;
        let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let programs = PROGRAMS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(" ");
        run(
            "compiling dropbear",
            Command::new("make")
                .arg(format!("-j{jobs}"))
                .arg(format!("PROGRAMS={programs}"))
                .arg("STATIC=1")
                .current_dir(&src),
        )?;
        for (p, _) in PROGRAMS {
            run("stripping dropbear", Command::new("strip").arg(src.join(p)))?;
            std::fs::copy(src.join(p), tmp.join(p))?;
        }
        // It runs, and says which version it is.
        let out = Command::new(tmp.join("dropbear")).arg("-V").output().context("running the built dropbear")?;
        let said = String::from_utf8_lossy(&out.stderr);
        let upstream = version.split('-').next().unwrap_or(version);
        anyhow::ensure!(said.contains(upstream), "the built dropbear says {:?}, not version {upstream}", said.trim());
        run(
            "removing the build tree",
            Command::new("rm").arg("-rf").arg(&sodium).arg(tmp.join("src")).arg(tmp.join("apt")),
        )?;
        Ok(())
    })?;
    Ok(dir)
}

/// Downloads Debian's source package `dropbear=version` into `tmp/src` and unpacks it (the
/// upstream tarball, then the `debian/` tarball inside it); returns the source tree.
fn fetch_source(tmp: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let apt = tmp.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    std::fs::write(apt.join("sources.list.d/src.sources"), deb_src_sources()?)?;
    let opts = [
        "-o".to_owned(),
        format!("Dir::Etc::SourceList={}", apt.join("none.list").display()),
        "-o".to_owned(),
        format!("Dir::Etc::SourceParts={}", apt.join("sources.list.d").display()),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
    ];
    run("reading the source lists", apt_env(Command::new("apt-get").args(&opts).args(["update", "-q"])))?;
    let dl = tmp.join("src");
    std::fs::create_dir_all(&dl)?;
    run(
        "downloading the source package",
        apt_env(
            Command::new("apt-get")
                .args(&opts)
                .args(["source", "--download-only", "-q"])
                .arg(format!("dropbear={version}"))
                .current_dir(&dl),
        ),
    )?;
    let find = |part: &str| -> anyhow::Result<PathBuf> {
        std::fs::read_dir(&dl)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(part)) && !is_signature(p))
            .with_context(|| format!("downloading the source package: no {part} file"))
    };
    let orig = find(".orig.tar.")?;
    let debian = find(".debian.tar.")?;
    run("unpacking the source", Command::new("tar").arg("-xf").arg(&orig).arg("-C").arg(&dl))?;
    let tree = std::fs::read_dir(&dl)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dropbear")))
        .context("unpacking the source: no dropbear-* directory in it")?;
    run("unpacking the source", Command::new("tar").arg("-xf").arg(&debian).arg("-C").arg(&tree))?;
    Ok(tree)
}

fn is_signature(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "asc")
}

/// Debian's patches, in the order of `debian/patches/series`.
fn apply_debian_patches(src: &Path) -> anyhow::Result<()> {
    let series = std::fs::read_to_string(src.join("debian/patches/series")).unwrap_or_default();
    for name in series.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| !n.starts_with('#')) {
        apply_patch(src, &src.join("debian/patches").join(name), &format!("applying Debian's patch {name}"))?;
    }
    Ok(())
}

fn apply_patch(src: &Path, patch: &Path, what: &str) -> anyhow::Result<()> {
    run(what, Command::new("patch").args(["-p1", "--forward", "-s", "-d"]).arg(src).arg("-i").arg(patch)).map(drop)
}

/// The host's Debian sources (`HOST_DEBIAN_SOURCES`, one-line then deb822) as `deb-src`
/// entries in deb822 form.
fn deb_src_sources() -> anyhow::Result<String> {
    let [one_line, deb822] = HOST_DEBIAN_SOURCES;
    let mut out = String::new();
    if let Ok(t) = std::fs::read_to_string(one_line) {
        out.push_str(&one_line_to_deb822(&t));
    }
    if let Ok(t) = std::fs::read_to_string(deb822) {
        out.push_str(&deb822_to_src(&t));
    }
    anyhow::ensure!(!out.trim().is_empty(), "finding Debian's sources: no entry in the host's apt sources");
    Ok(out)
}

/// `deb [opts] URL SUITE COMPONENTS...` lines as deb-src stanzas (options dropped but for
/// `signed-by`).
fn one_line_to_deb822(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((options, rest)) => (options, rest),
            None => ("", rest),
        };
        let signed_by = options.split_whitespace().find_map(|o| o.strip_prefix("signed-by="));
        let words: Vec<&str> = rest.split_whitespace().collect();
        let [url, suite, components @ ..] = words.as_slice() else { continue };
        if components.is_empty() {
            continue;
        }
        out.push_str(&format!("Types: deb-src\nURIs: {url}\nSuites: {suite}\nComponents: {}\n", components.join(" ")));
        if let Some(k) = signed_by {
            out.push_str(&format!("Signed-By: {k}\n"));
        }
        out.push('\n');
    }
    out
}

/// deb822 stanzas with `Types: deb` as `deb-src` ones (comments dropped).
fn deb822_to_src(text: &str) -> String {
    let mut out = String::new();
    for stanza in text.split("\n\n") {
        let lines: Vec<&str> = stanza.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        let types = lines.iter().find_map(|l| l.strip_prefix("Types:")).map(str::trim);
        if !types.is_some_and(|t| t.split_whitespace().any(|w| w == "deb")) {
            continue;
        }
        for l in lines {
            if l.starts_with("Types:") {
                out.push_str("Types: deb-src\n");
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_stanzas_become_deb_src() {
        let host = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://x.example\nSuites: s\nComponents: main\n";
        let out = deb822_to_src(host);
        assert_eq!(
            out,
            "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n"
        );
    }

    #[test]
    fn one_line_entries_become_deb_src() {
        let host = "# comment\ndeb http://mirror.example/debian bookworm main contrib\ndeb [arch=amd64 signed-by=/k.gpg] http://m2.example/debian bookworm-updates main\ndeb-src http://x.example s main\ndeb http://broken.example\n";
        let out = one_line_to_deb822(host);
        assert_eq!(
            out,
            "Types: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main contrib\n\n\
             Types: deb-src\nURIs: http://m2.example/debian\nSuites: bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n"
        );
    }
}
