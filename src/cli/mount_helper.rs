//! The mount(8) calling convention: `mount -t fuse.vmcryptfs /ds /mnt -o
//! keystore=DIR,allow_other` (or the same line in /etc/fstab) makes fuse3's
//! `mount.fuse3` run `vmcryptfs /ds /mnt -o OPTIONS`. This rewrites that
//! form into `vmcryptfs --keystore DIR mount /ds /mnt -o OPTIONS` before
//! clap parses it, so there is one code path for mounting.

use std::ffi::{OsStr, OsString};

/// If `args` (program name first) is in the mount(8) form, the equivalent
/// `mount` subcommand arguments; otherwise `args` unchanged.
pub fn rewrite_mount_helper_args(args: Vec<OsString>) -> Vec<OsString> {
    let looks_like_path = |a: &OsStr| {
        a.to_str()
            .is_none_or(|s| s.starts_with('/') || s.starts_with('.'))
    };
    let is_helper_form = args.len() >= 3 && looks_like_path(&args[1]) && looks_like_path(&args[2]);
    if !is_helper_form {
        return args;
    }
    let mut keystore = None;
    let mut options: Vec<String> = Vec::new();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let arg = arg.to_string_lossy();
        let list = match arg.as_ref() {
            "-o" => rest
                .next()
                .map(|o| o.to_string_lossy().into_owned())
                .unwrap_or_default(),
            other => match other.strip_prefix("-o") {
                Some(list) => list.to_string(),
                // mount(8) may pass -n (no mtab), -v (verbose), -f (fake): harmless here.
                None => continue,
            },
        };
        for option in list.split(',').filter(|o| !o.is_empty()) {
            match option.strip_prefix("keystore=") {
                Some(dir) => keystore = Some(dir.to_string()),
                None => options.push(option.to_string()),
            }
        }
    }
    let mut out = vec![args[0].clone()];
    if let Some(dir) = keystore {
        out.push("--keystore".into());
        out.push(dir.into());
    }
    out.push("mount".into());
    out.push(args[1].clone());
    out.push(args[2].clone());
    if !options.is_empty() {
        out.push("-o".into());
        out.push(options.join(",").into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rewrite_mount_helper_args(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn mount_helper_form_becomes_the_mount_subcommand() {
        assert_eq!(
            rewrite(&[
                "vmcryptfs",
                "/ds",
                "/mnt",
                "-o",
                "rw,keystore=/var/lib/vmcryptfs,allow_other,_netdev"
            ]),
            [
                "vmcryptfs",
                "--keystore",
                "/var/lib/vmcryptfs",
                "mount",
                "/ds",
                "/mnt",
                "-o",
                "rw,allow_other,_netdev"
            ]
        );
        assert_eq!(
            rewrite(&["vmcryptfs", "/ds", "/mnt"]),
            ["vmcryptfs", "mount", "/ds", "/mnt"]
        );
        // Our own options pass through to `mount -o`, status_group too.
        assert_eq!(
            rewrite(&[
                "vmcryptfs",
                "/ds",
                "/mnt",
                "-o",
                "keystore=/k,status_group=kvm,ro"
            ]),
            [
                "vmcryptfs",
                "--keystore",
                "/k",
                "mount",
                "/ds",
                "/mnt",
                "-o",
                "status_group=kvm,ro"
            ]
        );
    }

    #[test]
    fn subcommands_are_left_alone() {
        let args = ["vmcryptfs", "mount", "/ds", "/mnt", "-o", "allow_other"];
        assert_eq!(rewrite(&args), args);
        assert_eq!(
            rewrite(&["vmcryptfs", "status", "/ds"]),
            ["vmcryptfs", "status", "/ds"]
        );
        assert_eq!(
            rewrite(&["vmcryptfs", "--keystore", "/k", "status", "/ds"]),
            ["vmcryptfs", "--keystore", "/k", "status", "/ds"]
        );
    }
}
