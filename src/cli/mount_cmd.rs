//! `vmcryptfs mount`: checks, daemonizing, the FUSE session, and clean
//! unmount on SIGINT/SIGTERM.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use super::{open_provider, CliError, ExitKind};
use crate::content::encrypted_file::ReadSettings;
use crate::content::read_ahead::ReadAhead;
use crate::content::read_around::ReadAround;
use crate::control::virtual_file::StatusAccess;
use crate::datastore::backing_device;
use crate::datastore::registry::Datastore;
use crate::datastore::scrub::Rate;
use crate::frontend::VmCryptFs;

/// Set by a backgrounding parent in its child's environment.
const BACKGROUND_ENV: &str = "VMCRYPTFS_BACKGROUND_CHILD";
/// What a background child prints on stdout once the mount is live.
const READY_LINE: &str = "vmcryptfs: mounted";

/// Arguments of `vmcryptfs mount`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// The datastore directory (one folder per VM home).
    pub datastore: PathBuf,
    /// Where to show the plaintext view (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// Mount options, comma-separated: allow_other, allow_root, ro,
    /// threads=N (FUSE worker threads, default 4), read_around=auto|off|KIB
    /// (whether a small read of an encrypted file that misses the page
    /// cache also brings in the aligned window of its backing file around
    /// it: auto, the default, does so with 128 KiB windows for a file that
    /// fits in available memory while its reads keep coming back to
    /// cached pages; off (or 0) never; KIB always, with that window; for a
    /// read-only open through the page cache the window's plaintext is
    /// also copied into the kernel's cache, so reads of its neighbours
    /// never reach the daemon),
    /// read_ahead=auto|off|MIB (how far ahead of a sequential reader of an
    /// encrypted file the backing reads are started: auto, the default,
    /// reads 4 MiB ahead when the device a file lives on reads ahead less
    /// by itself and leaves it to the device otherwise; off (or 0) always
    /// leaves it to the device; MIB, up to 64, reads that far ahead),
    /// status_group=GROUP (a group name or number whose members may read
    /// the status files `.control`, `.control.json` and `.stats`, mode
    /// 0440, `.control` 0640; commands stay the owner's; without it only
    /// the user the mount runs as may read them),
    /// scrub_rate=RATE (how many plaintext bytes a second a scrub started
    /// through `.control` reads at most unless its command says: 50M,
    /// 512K, 1G, or unlimited; default 64M),
    /// and kernel options such as noatime, nodev, nosuid, noexec.
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    pub options: Vec<String>,
    /// Stay in the foreground (logs to stderr; Ctrl-C or SIGTERM unmounts).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// In the background, append logs to this file instead of discarding them.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Parsed `-o` options.
#[derive(Debug)]
struct MountSettings {
    config: Config,
    reads: ReadSettings,
    /// The group that may read the status files (`status_group`).
    status_group: Option<u32>,
    /// Scrubs' default rate limit (`scrub_rate`).
    scrub_rate: Rate,
}

fn parse_options(args: &MountArgs, datastore: &Path) -> Result<MountSettings, CliError> {
    let mut config = Config::default();
    let mut reads = ReadSettings::DEFAULT;
    let mut status_group = None;
    let mut scrub_rate = Rate(Some(crate::datastore::scrub::DEFAULT_RATE));
    config.n_threads = Some(4);
    config.clone_fd = true;
    let fsname = super::mountinfo::fsname_for(datastore);
    config.mount_options = vec![
        MountOption::Subtype("vmcryptfs".into()),
        MountOption::DefaultPermissions,
    ];
    for option in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        let (key, value) = option
            .split_once('=')
            .map_or((option, None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("allow_other", None) => config.acl = SessionACL::All,
            ("allow_root", None) => config.acl = SessionACL::RootAndOwner,
            ("ro", None) => config.mount_options.push(MountOption::RO),
            ("rw", None) => config.mount_options.push(MountOption::RW),
            ("noatime", None) => config.mount_options.push(MountOption::NoAtime),
            ("nodev", None) => config.mount_options.push(MountOption::NoDev),
            ("nosuid", None) => config.mount_options.push(MountOption::NoSuid),
            ("noexec", None) => config.mount_options.push(MountOption::NoExec),
            ("threads", Some(n)) => {
                let n: usize =
                    n.parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| {
                            CliError::new(
                                ExitKind::Usage,
                                format!("mount option threads={n}: expected a number from 1 to 64"),
                            )
                        })?;
                config.n_threads = Some(n);
            }
            ("read_around", Some(value)) => {
                reads.around = ReadAround::parse(value).map_err(|e| bad_value(option, e))?;
            }
            ("read_ahead", Some(value)) => {
                reads.ahead = ReadAhead::parse(value).map_err(|e| bad_value(option, e))?;
            }
            ("scrub_rate", Some(value)) => {
                scrub_rate = Rate::parse(value).map_err(|e| bad_value(option, e))?;
            }
            ("status_group", Some(group)) => {
                status_group = Some(resolve_group(group).map_err(|e| bad_value(option, e))?);
            }
            // Options fstab and mount(8) pass that concern them, not us.
            (
                "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "owner" | "_netdev"
                | "nofail" | "suid" | "dev" | "exec" | "async" | "relatime" | "atime",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") => {}
            _ => {
                return Err(CliError::new(
                    ExitKind::Usage,
                    format!("unknown mount option {option:?}; see `vmcryptfs mount --help`"),
                ))
            }
        }
    }
    config.mount_options.push(MountOption::FSName(fsname));
    Ok(MountSettings {
        config,
        reads,
        status_group,
        scrub_rate,
    })
}

/// The gid of `group`: a number, or a name in the group database.
fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(entry)) => Ok(entry.gid.as_raw()),
        Ok(None) => Err(format!(
            "no group named {group:?}; give a group name from /etc/group or a number"
        )),
        Err(e) => Err(format!("looking up group {group:?}: {e}")),
    }
}

/// The usage error for mount option `option` (`key=value`), refused for
/// `reason`.
fn bad_value(option: &str, reason: impl std::fmt::Display) -> CliError {
    CliError::new(ExitKind::Usage, format!("mount option {option}: {reason}"))
}

/// The search path when none is set: mount(8) runs its helpers with a
/// sanitized environment, and fusermount3 must still be found.
const STANDARD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn find_in_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| STANDARD_PATH.into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Gives the process a standard PATH if it has none (as under mount(8)),
/// so that fuser finds fusermount3.
fn ensure_path() {
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", STANDARD_PATH);
    }
}

/// Checks everything a mount needs, with messages that say how to fix it.
fn preflight(datastore: &Path, mountpoint: &Path) -> Result<(), CliError> {
    if !datastore.is_dir() {
        return Err(CliError::new(
            ExitKind::Io,
            format!(
                "datastore {} does not exist or is not a directory",
                datastore.display()
            ),
        ));
    }
    if !mountpoint.is_dir() {
        return Err(CliError::new(
            ExitKind::Mount,
            format!(
                "mountpoint {} does not exist or is not a directory: create it with `mkdir -p {}`",
                mountpoint.display(),
                mountpoint.display()
            ),
        ));
    }
    if super::mountinfo::is_mount_point(mountpoint) {
        return Err(CliError::new(
            ExitKind::Mount,
            format!("mountpoint {} is busy: something is already mounted there (unmount it with `fusermount3 -u {}`)", mountpoint.display(), mountpoint.display()),
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(CliError::new(
            ExitKind::Mount,
            "no /dev/fuse: load the FUSE kernel module (`modprobe fuse`), or in a container pass the device through (`--device /dev/fuse`)",
        ));
    }
    if std::env::var_os("FUSERMOUNT_PATH").is_none() && !find_in_path("fusermount3") {
        return Err(CliError::new(
            ExitKind::Mount,
            "fusermount3 not found in PATH: install fuse3 (Debian/Ubuntu: `apt-get install fuse3`)",
        ));
    }
    Ok(())
}

/// Runs `vmcryptfs mount`.
pub fn run(args: MountArgs, keystore: &Path) -> Result<(), CliError> {
    // Before the key store and the mount start their threads and allocate.
    super::malloc_settings::apply_for_the_mount();
    ensure_path();
    let datastore = absolute(&args.datastore)?;
    let mountpoint = absolute(&args.mountpoint)?;
    let settings = parse_options(&args, &datastore)?;
    preflight(&datastore, &mountpoint)?;
    let provider = open_provider(keystore)?;
    crate::datastore::known::KnownDatastores::new(keystore).record(&datastore)?;
    if !args.foreground {
        return spawn_background(&args, keystore);
    }
    let background = std::env::var_os(BACKGROUND_ENV).is_some();
    if background {
        // Leave the parent's session, so its terminal's Ctrl-C and hangup
        // do not reach the mount.
        let _ = rustix::process::setsid();
    }
    // Unlocks share their key store openings (a host's VMs powering on
    // together); see `keys::embedded::unlock_cache`.
    let provider = Arc::new(provider.caching_unlocks());
    serve(
        datastore,
        mountpoint,
        settings,
        provider,
        background,
        args.log_file.as_deref(),
    )
}

fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(path)
        .map_err(|e| CliError::new(ExitKind::Io, format!("resolving {}: {e}", path.display())))
}

/// Reads every VM home's status once, in the background, so that the
/// first read of the root `.control` after mounting finds what it needs
/// from disk already read (at ten thousand VM homes: 288 ms for that first
/// read against 35 ms for the next). The status view reads again only
/// what changes later. On a thread of its own that then exits, for the
/// reason `control_ops::with_datastore_summary` gives.
fn warm_status_view(store: Arc<Datastore>) {
    let started = std::thread::Builder::new()
        .name("vmcryptfs-status-warm".into())
        .spawn(move || {
            if let Err(e) = store.statuses() {
                log::warn!("could not read the VM homes' status after mounting: {e}");
            }
        });
    if let Err(e) = started {
        log::info!("no thread to read the status ahead ({e}); the first .control read does");
    }
}

fn serve(
    datastore: PathBuf,
    mountpoint: PathBuf,
    settings: MountSettings,
    provider: Arc<crate::keys::provider_set::ProviderSet>,
    background: bool,
    log_file: Option<&Path>,
) -> Result<(), CliError> {
    // Core dumps and the dumpable flag were turned off and a private umask
    // set before the keys were loaded (`cli::run`). Now that the providers
    // are open, umask 0: backing files must get exactly the modes the
    // kernel asks for, since it has already applied the calling process's
    // umask to them (pjdfstest checks). Everything else this process may
    // create from here on is in the key store, whose directory is 0700;
    // the log file is opened before this, with an explicit 0600.
    let log = match (background, log_file) {
        (true, Some(path)) => match open_log_file(path) {
            Ok(file) => Some(file),
            Err(err) => {
                report_ready(background, Err(&err));
                return Err(err);
            }
        },
        _ => None,
    };
    rustix::process::umask(rustix::fs::Mode::empty());
    let store = Arc::new(Datastore::new(datastore.clone(), provider));
    let status_store = store.clone();
    let fs = VmCryptFs::new(store)
        .map_err(|e| {
            CliError::new(
                ExitKind::Io,
                format!("opening datastore {}: {e}", datastore.display()),
            )
        })?
        .with_read_settings(settings.reads)
        .with_scrub_rate(settings.scrub_rate)
        .with_status_access(StatusAccess::new(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
            settings.status_group,
        ));
    let filler = fs.cache_filler_starter();
    let mut session = match fuser::Session::new(fs, &mountpoint, &settings.config) {
        Ok(session) => session,
        Err(e) => {
            let err = CliError::new(
                ExitKind::Mount,
                format!("mounting {} failed: {e}", mountpoint.display()),
            );
            report_ready(background, Err(&err));
            return Err(err);
        }
    };
    // A fill can wait for a worker to answer a read, and a truncation for a
    // fill (see `frontend::cache_fill`): with one worker that could be the
    // same thread.
    if settings.config.n_threads.unwrap_or(1) >= 2 {
        filler.start(session.notifier());
    }
    warm_status_view(status_store);
    log::info!(
        "mounted {} at {}",
        datastore.display(),
        mountpoint.display()
    );
    if let Some(read_around) = settings.reads.around.describe() {
        log::info!("read-around: {read_around}");
    }
    // `auto` is decided per file, by its device; this is the decision for
    // files on the datastore's own.
    let device_readahead = backing_device::readahead_bytes(&datastore);
    log::info!(
        "read-ahead: {} (the datastore's device reads ahead {})",
        settings.reads.ahead.resolve(device_readahead).describe(),
        device_readahead.map_or("unknown".to_owned(), |ra| format!("{} KiB", ra / 1024))
    );
    widen_readahead(&datastore, &mountpoint);
    let unmounter = session.unmount_callable();
    install_signal_handlers(unmounter, mountpoint.clone());
    if background {
        report_ready(true, Ok(()));
        detach_output(log.as_ref());
    }
    session.run().map_err(|e| {
        CliError::new(
            ExitKind::Io,
            format!("FUSE session for {} ended: {e}", mountpoint.display()),
        )
    })?;
    log::info!("unmounted {}", mountpoint.display());
    Ok(())
}

/// Readahead window of the mount, in KiB: the largest request the
/// frontend accepts (`max_readahead` at FUSE init is 1 MiB).
const READAHEAD_KB: u32 = 1024;

/// Sequential reads through the page cache (read-only opens of disks,
/// `qemu-img convert` from the mount, backups) reach us as readahead
/// requests, and the kernel gives a new FUSE mount a 128 KiB window. At
/// 1 MiB, each request carries 256 blocks for `content::parallel` to
/// decrypt on every core, and fewer round trips: a warm 1 GiB sequential
/// read measured 1398 -> 1590 MiB/s (medians of 6 alternating rounds,
/// docs/PERFORMANCE.md, "Mount readahead window"). The window is a
/// property of this mount's backing-device entry in sysfs, so this needs
/// root; without it the kernel's default stays, which is only slower.
fn widen_readahead(datastore: &Path, mountpoint: &Path) {
    let source = super::mountinfo::fsname_for(datastore);
    let canonical = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let Some(device) = super::mountinfo::device_of(&canonical, &source) else {
        log::debug!(
            "mount of {} not found in mountinfo: readahead left at the kernel default",
            mountpoint.display()
        );
        return;
    };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&knob, READAHEAD_KB.to_string()) {
        Ok(()) => log::debug!(
            "readahead of {} set to {READAHEAD_KB} KiB ({knob})",
            mountpoint.display()
        ),
        Err(e) => log::info!(
            "readahead of {} left at the kernel default: cannot write {knob}: {e}",
            mountpoint.display()
        ),
    }
}

fn install_signal_handlers(mut unmounter: fuser::SessionUnmounter, mountpoint: PathBuf) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(e) => {
            log::warn!("cannot install signal handlers: {e}");
            return;
        }
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                log::info!("signal {signal}: unmounting {}", mountpoint.display());
                match unmounter.unmount() {
                    Ok(()) => break,
                    Err(e) => log::error!("unmount of {} failed: {e} (files still open?); retry, or `fusermount3 -u -z {}`", mountpoint.display(), mountpoint.display()),
                }
            }
        })
        .expect("spawning the signal thread");
}

/// Tells a waiting parent (background mode) how the mount went, through
/// our stdout, then detaches stdout and stderr from the parent's terminal.
fn report_ready(background: bool, result: Result<(), &CliError>) {
    if !background {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = match result {
        Ok(()) => writeln!(stdout, "{READY_LINE}"),
        Err(_) => Ok(()),
    };
    let _ = stdout.flush();
}

/// Opens (or creates) the log file of a background mount: mode 0600, since
/// it names VMs and files; never through a symlink (`O_NOFOLLOW`), and only
/// a regular file (a FIFO there would hang the mount's every log line).
/// An existing file with a wider mode is narrowed to 0600 (by descriptor)
/// rather than refused, so a mount restarted after an upgrade keeps its
/// log; the change is logged.
fn open_log_file(path: &Path) -> Result<File, CliError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| {
        CliError::new(
            ExitKind::Io,
            format!("cannot open log file {}: {e}", path.display()),
        )
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.file_type().is_file() {
        return Err(CliError::new(
            ExitKind::Io,
            format!(
                "log file {} is not a regular file; give a file path to --log-file",
                path.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
        log::warn!(
            "log file {} had mode {:03o}; set it to 600",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(file)
}

/// Points stdout and stderr of a background mount at its log file (or
/// /dev/null), so the parent's terminal and pipes are released.
fn detach_output(log_file: Option<&File>) {
    let null;
    let target = match log_file {
        Some(file) => file,
        None => match File::options().write(true).open("/dev/null") {
            Ok(file) => {
                null = file;
                &null
            }
            Err(e) => {
                log::warn!("cannot open /dev/null: {e}");
                return;
            }
        },
    };
    let _ = rustix::stdio::dup2_stdout(target);
    let _ = rustix::stdio::dup2_stderr(target);
}

/// Starts `vmcryptfs mount --foreground` as a detached child and waits
/// until it reports the mount ready, or exits with an error (which it has
/// already printed to our shared stderr).
fn spawn_background(args: &MountArgs, keystore: &Path) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            ExitKind::Failure,
            format!("cannot find own executable: {e}"),
        )
    })?;
    let mut command = Command::new(exe);
    command
        .arg("--keystore")
        .arg(keystore)
        .arg("mount")
        .arg("--foreground")
        .arg(&args.datastore)
        .arg(&args.mountpoint)
        .env(BACKGROUND_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if !args.options.is_empty() {
        command.arg("-o").arg(args.options.join(","));
    }
    if let Some(log) = &args.log_file {
        command.arg("--log-file").arg(log);
    }
    let mut child = command.spawn().map_err(|e| {
        CliError::new(
            ExitKind::Failure,
            format!("starting the mount process: {e}"),
        )
    })?;
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
    if line.trim() == READY_LINE {
        return Ok(());
    }
    let status = child.wait().map_err(|e| {
        CliError::new(
            ExitKind::Failure,
            format!("waiting for the mount process: {e}"),
        )
    })?;
    let kind = match status.code() {
        Some(3) => ExitKind::Key,
        Some(4) => ExitKind::Io,
        Some(2) => ExitKind::Usage,
        _ => ExitKind::Mount,
    };
    Err(CliError::new(
        kind,
        format!(
            "mount of {} failed (see the message above)",
            args.mountpoint.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_group_of(option: &str) -> Result<Option<u32>, CliError> {
        let args = MountArgs {
            datastore: "/ds".into(),
            mountpoint: "/mnt".into(),
            options: vec![option.into()],
            foreground: true,
            log_file: None,
        };
        parse_options(&args, Path::new("/ds")).map(|s| s.status_group)
    }

    #[test]
    fn status_group_takes_a_number_or_a_name() {
        assert_eq!(status_group_of("ro").unwrap(), None);
        assert_eq!(status_group_of("status_group=4242").unwrap(), Some(4242));
        assert_eq!(status_group_of("status_group=root").unwrap(), Some(0));
        let err = status_group_of("status_group=no-such-group-here").unwrap_err();
        assert_eq!(err.kind, ExitKind::Usage);
        assert!(err.to_string().contains("no group named"), "{err}");
    }
}
