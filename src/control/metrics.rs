//! The `.stats` file: the mount's counters in the Prometheus text
//! exposition format (version 0.0.4), so node_exporter's textfile collector
//! or a one-line scrape can collect it.
//!
//! Each counter family has one series per VM home seen by the mount
//! (label `vm`) and one series without labels: the mount total.

use crate::datastore::counters::CounterValues;

/// One VM home's line items.
pub struct VmStats {
    /// Directory name, escaped ([`crate::format::untrusted::name`]): the
    /// label value escapes it again per the exposition format.
    pub name: String,
    /// Its counters.
    pub counters: CounterValues,
    /// Whether its DEKs cannot be unwrapped now.
    pub locked: bool,
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A counter family: name (after `vmcryptfs_`), help text, and its value.
type CounterFamily = (&'static str, &'static str, fn(&CounterValues) -> u64);

const COUNTERS: &[CounterFamily] = &[
    ("read_operations_total", "Reads of encrypted files.", |c| {
        c.read_ops
    }),
    (
        "read_bytes_total",
        "Plaintext bytes read from encrypted files.",
        |c| c.read_bytes,
    ),
    (
        "write_operations_total",
        "Writes to encrypted files.",
        |c| c.write_ops,
    ),
    (
        "write_bytes_total",
        "Plaintext bytes written to encrypted files.",
        |c| c.write_bytes,
    ),
    (
        "authentication_failures_total",
        "Blocks, file headers, extended attribute values or wrapped DEKs that failed authentication.",
        |c| c.auth_failures,
    ),
    (
        "key_cache_hits_total",
        "DEK lookups served from the key cache.",
        |c| c.key_cache_hits,
    ),
    (
        "key_cache_misses_total",
        "DEK lookups that unwrapped through the key provider.",
        |c| c.key_cache_misses,
    ),
    (
        "rekeys_total",
        "Shallow re-keys done through this mount.",
        |c| c.rekeys,
    ),
    (
        "read_around_windows_total",
        "Windows of backing files brought in around cold small reads (mount option read_around).",
        |c| c.read_around_windows,
    ),
    (
        "read_ahead_bytes_total",
        "Backing bytes whose reads were started ahead of sequential reads (mount option read_ahead).",
        |c| c.read_ahead_bytes,
    ),
    (
        "cache_fill_bytes_total",
        "Plaintext bytes copied into the kernel's page cache around small reads through it (mount option read_around).",
        |c| c.cache_fill_bytes,
    ),
    (
        "scrub_bytes_total",
        "Plaintext bytes of encrypted files read and checked by scrubs (holes excluded).",
        |c| c.scrub_bytes,
    ),
    ("scrubs_total", "Scrubs of a VM home finished.", |c| c.scrubs),
    (
        "scrub_damaged_files_total",
        "Damaged encrypted files found by scrubs (again at every scrub that finds them).",
        |c| c.scrub_damaged_files,
    ),
];

/// What the mount as a whole did, beside its VM homes' counters.
pub struct MountStats {
    /// Time since the mount started.
    pub uptime_seconds: f64,
    /// Openings of the embedded key store by the mount's process.
    pub key_store_opens: u64,
}

/// Renders the whole file.
pub fn render(mount: &MountStats, vms: &[VmStats]) -> String {
    let mut out = String::new();
    let mut total = CounterValues::default();
    for vm in vms {
        total += vm.counters;
    }
    for (name, help, value) in COUNTERS {
        out.push_str(&format!(
            "# HELP vmcryptfs_{name} {help}\n# TYPE vmcryptfs_{name} counter\n"
        ));
        for vm in vms {
            out.push_str(&format!(
                "vmcryptfs_{name}{{vm=\"{}\"}} {}\n",
                escape_label(&vm.name),
                value(&vm.counters)
            ));
        }
        out.push_str(&format!("vmcryptfs_{name} {}\n", value(&total)));
    }
    out.push_str("# HELP vmcryptfs_vm_locked Whether the VM home is locked (its DEKs cannot be unwrapped).\n# TYPE vmcryptfs_vm_locked gauge\n");
    for vm in vms {
        out.push_str(&format!(
            "vmcryptfs_vm_locked{{vm=\"{}\"}} {}\n",
            escape_label(&vm.name),
            u8::from(vm.locked)
        ));
    }
    out.push_str(&format!(
        "# HELP vmcryptfs_locked_vms Locked VM homes.\n# TYPE vmcryptfs_locked_vms gauge\nvmcryptfs_locked_vms {}\n",
        vms.iter().filter(|vm| vm.locked).count()
    ));
    out.push_str(&format!(
        "# HELP vmcryptfs_key_store_opens_total Openings of the embedded key store (each reads its database and syncs twice); first unlocks that come together share them.\n# TYPE vmcryptfs_key_store_opens_total counter\nvmcryptfs_key_store_opens_total {}\n",
        mount.key_store_opens
    ));
    out.push_str(&format!(
        "# HELP vmcryptfs_uptime_seconds Time since the mount started.\n# TYPE vmcryptfs_uptime_seconds gauge\nvmcryptfs_uptime_seconds {:.3}\n",
        mount.uptime_seconds
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_vm_and_total_series_with_escaped_labels() {
        let vms = [
            VmStats {
                name: "vm1".into(),
                counters: CounterValues {
                    read_ops: 2,
                    read_bytes: 100,
                    ..Default::default()
                },
                locked: false,
            },
            VmStats {
                name: "odd \"name\"\\\n".into(),
                counters: CounterValues {
                    read_ops: 3,
                    ..Default::default()
                },
                locked: true,
            },
        ];
        let mount = MountStats {
            uptime_seconds: 12.5,
            key_store_opens: 7,
        };
        let text = render(&mount, &vms);
        assert!(text.contains("vmcryptfs_read_operations_total{vm=\"vm1\"} 2\n"));
        assert!(
            text.contains("vmcryptfs_read_operations_total{vm=\"odd \\\"name\\\"\\\\\\n\"} 3\n")
        );
        assert!(text.contains("\nvmcryptfs_read_operations_total 5\n"));
        assert!(text.contains("\nvmcryptfs_locked_vms 1\n"));
        assert!(text.contains("\nvmcryptfs_uptime_seconds 12.500\n"));
        assert!(text.contains("\nvmcryptfs_key_store_opens_total 7\n"));
        assert!(text.contains("# TYPE vmcryptfs_rekeys_total counter\n"));
        // Every line is a comment or `name[{labels}] value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
