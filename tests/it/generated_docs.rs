//! Man pages and shell completions are generated from the clap definitions
//! and committed; this test fails when they are out of date.
//!
//! Regenerate with `scripts/gen-docs` (which runs this test with
//! `VMCRYPTFS_REGENERATE_DOCS=1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use vmcryptfs::cli::Cli;

/// Every generated file: relative path → content.
fn generate() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let cmd = Cli::command();
    // clap wants 'static names; leaking a few short strings in a test is fine.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut pages = vec![(String::from("vmcryptfs"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("vmcryptfs-{}", sub.get_name());
        for subsub in sub.get_subcommands() {
            let full = format!("{name}-{}", subsub.get_name());
            pages.push((full.clone(), subsub.clone().name(leak(full))));
        }
        pages.push((name.clone(), sub.clone().name(leak(name))));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out).unwrap();
        files.insert(PathBuf::from(format!("docs/man/{name}.1")), out);
    }
    for (shell, file) in [
        (Shell::Bash, "vmcryptfs.bash"),
        (Shell::Zsh, "_vmcryptfs"),
        (Shell::Fish, "vmcryptfs.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "vmcryptfs", &mut out);
        files.insert(PathBuf::from(format!("completions/{file}")), out);
    }
    files
}

#[test]
fn man_pages_and_completions_are_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = generate();
    assert!(files.len() > 10, "one page per subcommand");
    if std::env::var_os("VMCRYPTFS_REGENERATE_DOCS").is_some() {
        for (path, content) in &files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, content).unwrap();
        }
        return;
    }
    for (path, content) in &files {
        let committed = std::fs::read(root.join(path)).unwrap_or_default();
        assert!(
            committed == *content,
            "{} is out of date: run scripts/gen-docs",
            path.display()
        );
    }
}
