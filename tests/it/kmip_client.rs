//! The KMIP client and provider as a library, against a real KMS (PyKMIP):
//! every operation vmcryptfs uses, server-side and host-side wrapping
//! reading each other's bytes, and the failures a KMS can produce:
//! a refused operation, an unknown key, tampering, a server that accepts
//! TCP but never answers.

use crate::common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::kms::{processes_in_group, Kms};
use vmcryptfs::crypto::secret::Dek;
use vmcryptfs::keys::kmip::client::{KmipClient, KmipError};
use vmcryptfs::keys::kmip::tags::{reason, state};
use vmcryptfs::keys::kmip::transport::{ClientIdentity, Deadline, Endpoint};
use vmcryptfs::keys::kmip::{KmipConfig, KmipProvider, WrapMode};
use vmcryptfs::keys::{KeyProvider, ProviderError};

fn identity(kms: &Kms) -> ClientIdentity {
    ClientIdentity {
        ca: kms.file("ca.pem").into(),
        cert: kms.file("client.pem").into(),
        key: kms.file("client.key").into(),
    }
}

fn client(kms: &Kms, server: &str, request_timeout: Duration) -> KmipClient {
    let endpoint = Endpoint {
        server: server.to_owned(),
        connect_timeout: Duration::from_secs(2),
        request_timeout,
    };
    KmipClient::new(endpoint, &identity(kms), 0).unwrap()
}

fn config(kms: &Kms, wrap: WrapMode) -> KmipConfig {
    KmipConfig {
        server: kms.server.clone(),
        ca: kms.file("ca.pem").into(),
        cert: kms.file("client.pem").into(),
        key: kms.file("client.key").into(),
        key_series: "lib-test".into(),
        wrap,
        connect_timeout_ms: 2000,
        request_timeout_ms: 5000,
        retries: 1,
        operation_timeout_ms: 30_000,
    }
}

/// A deadline no healthy KMS comes near.
fn soon() -> Deadline {
    Deadline::after(Duration::from_secs(30))
}

/// PyKMIP runs its policy monitor as a second process; stopping the server
/// must take it along, or every test leaves a server process behind.
#[test]
fn stopping_the_kms_leaves_no_process_behind() {
    let kms = Kms::start();
    let group = kms.process_group();
    let running = processes_in_group(group);
    assert!(
        running.contains(&group),
        "the server leads its group: {running:?}"
    );
    kms.stop();
    let left = processes_in_group(group);
    assert!(left.is_empty(), "processes left after stop: {left:?}");
}

#[test]
fn every_operation_against_a_real_kms() {
    let kms = Kms::start();
    let client = client(&kms, &kms.server, Duration::from_secs(5));
    client.ping(&soon()).unwrap();
    let uid = client.create_aes256(&soon(), "ops-v1", "ops").unwrap();
    assert_eq!(
        client.get_attributes(&soon(), &uid).unwrap().state,
        Some(state::PRE_ACTIVE)
    );
    client.activate(&soon(), &uid).unwrap();
    let attributes = client.get_attributes(&soon(), &uid).unwrap();
    assert_eq!(attributes.state, Some(state::ACTIVE));
    assert_eq!(attributes.name.as_deref(), Some("ops-v1"));
    assert_eq!(
        client.locate_by_name(&soon(), "ops-v1").unwrap(),
        vec![uid.clone()]
    );
    assert_eq!(
        client.locate_by_group(&soon(), "ops").unwrap(),
        vec![uid.clone()]
    );
    assert!(client.locate_by_name(&soon(), "ops-v2").unwrap().is_empty());

    let (ciphertext, tag) = client
        .encrypt_gcm(&soon(), &uid, &[9u8; 32], &[1u8; 12], b"aad")
        .unwrap();
    assert_eq!((ciphertext.len(), tag.len()), (32, 16));
    assert_ne!(ciphertext, vec![9u8; 32]);
    let plain = client
        .decrypt_gcm(&soon(), &uid, &ciphertext, &[1u8; 12], b"aad", &tag)
        .unwrap();
    assert_eq!(plain.as_slice(), &[9u8; 32]);
    assert!(client
        .decrypt_gcm(&soon(), &uid, &ciphertext, &[1u8; 12], b"aae", &tag)
        .is_err());
    assert_eq!(client.get_key(&soon(), &uid).unwrap().len(), 32);

    // A refused operation: Activate of an Active key.
    let err = client.activate(&soon(), &uid).unwrap_err();
    assert!(matches!(err, KmipError::Refused { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("Activate refused by 127.0.0.1:"),
        "{err}"
    );
    // Destroy of an Active key is refused until Revoke.
    assert!(client.destroy(&soon(), &uid).is_err());
    client.revoke(&soon(), &uid).unwrap();
    assert_eq!(
        client.get_attributes(&soon(), &uid).unwrap().state,
        Some(state::DEACTIVATED)
    );
    client.destroy(&soon(), &uid).unwrap();
    // An unknown key.
    let err = client.get_key(&soon(), &uid).unwrap_err();
    assert_eq!(err.reason(), Some(reason::ITEM_NOT_FOUND), "{err}");
    assert!(err.to_string().contains("Item Not Found"), "{err}");
}

/// Concurrent Encrypts and Decrypts through one client go to the KMS as the
/// batch items of shared messages (KMIP 1.4 batching), each answered with
/// its own result: a bad tag fails only its own item. Counted, not timed:
/// 32 threads, each an Encrypt then a Decrypt, take far fewer than 64
/// messages (one each without batching).
#[test]
fn concurrent_operations_share_batched_messages_and_keep_their_own_answers() {
    const THREADS: u8 = 32;
    let kms = Kms::start();
    let client = client(&kms, &kms.server, Duration::from_secs(5));
    let uid = client.create_aes256(&soon(), "batch-v1", "batch").unwrap();
    client.activate(&soon(), &uid).unwrap();
    let before = client.messages_sent();
    std::thread::scope(|scope| {
        for n in 0..THREADS {
            let (client, uid) = (&client, &uid);
            scope.spawn(move || {
                let aad = [b'a', n];
                let (ciphertext, tag) = client
                    .encrypt_gcm(&soon(), uid, &[n; 32], &[n; 12], &aad)
                    .unwrap();
                let mut bad_tag = tag.clone();
                bad_tag[0] ^= 1;
                if n % 4 == 0 {
                    let err = client
                        .decrypt_gcm(&soon(), uid, &ciphertext, &[n; 12], &aad, &bad_tag)
                        .unwrap_err();
                    assert!(matches!(err, KmipError::Refused { .. }), "{err}");
                } else {
                    let plain = client
                        .decrypt_gcm(&soon(), uid, &ciphertext, &[n; 12], &aad, &tag)
                        .unwrap();
                    assert_eq!(plain.as_slice(), &[n; 32]);
                }
            });
        }
    });
    let messages = client.messages_sent() - before;
    assert!(
        messages < u64::from(THREADS),
        "{} operations took {messages} messages",
        2 * u64::from(THREADS)
    );
}

#[test]
fn server_and_local_wrapping_read_each_others_bytes() {
    let kms = Kms::start();
    let server_side = KmipProvider::new("kms", config(&kms, WrapMode::Server));
    let host_side = KmipProvider::new("kms", config(&kms, WrapMode::Local));
    let kek = server_side.ensure_current().unwrap();
    assert_eq!(host_side.current_kek().unwrap(), kek);
    let dek = Dek::generate();
    let by_server = server_side.wrap_dek(&kek, &dek, b"bundle aad").unwrap();
    let by_host = host_side.wrap_dek(&kek, &dek, b"bundle aad").unwrap();
    for wrapped in [&by_server, &by_host] {
        for provider in [&server_side, &host_side] {
            let unwrapped = provider.unwrap_dek(&kek, wrapped, b"bundle aad").unwrap();
            assert_eq!(unwrapped.expose(), dek.expose());
        }
    }
    // Tampering with any byte, or another AAD, is detected on both paths.
    for provider in [&server_side, &host_side] {
        for i in [0, 12, 43, 59] {
            let mut bad = by_server.clone();
            bad[i] ^= 1;
            let err = provider.unwrap_dek(&kek, &bad, b"bundle aad").unwrap_err();
            assert!(
                matches!(err, ProviderError::UnwrapFailed { .. }),
                "byte {i}: {err}"
            );
        }
        let err = provider
            .unwrap_dek(&kek, &by_server, b"other aad")
            .unwrap_err();
        assert!(matches!(err, ProviderError::UnwrapFailed { .. }), "{err}");
    }
    // A retired version still unwraps (the KMS refuses Decrypt with a
    // Deactivated key, so it is fetched), and no longer wraps.
    let next = server_side.rotate().unwrap();
    assert_eq!(next.version, 2);
    server_side.retire(1).unwrap();
    let unwrapped = server_side
        .unwrap_dek(&kek, &by_server, b"bundle aad")
        .unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
    for provider in [&server_side, &host_side] {
        let err = provider.wrap_dek(&kek, &dek, b"x").unwrap_err();
        assert!(matches!(err, ProviderError::KekNotActive { .. }), "{err}");
    }
    let err = server_side.retire(2).unwrap_err();
    assert!(
        matches!(err, ProviderError::CurrentKekVersion { .. }),
        "{err}"
    );
}

#[test]
fn a_server_that_never_answers_times_out_with_the_server_named() {
    let kms = Kms::start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let client = client(&kms, &address, Duration::from_millis(500));
    let started = Instant::now();
    let err = client.ping(&soon()).unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains(&address), "{err}");
    assert!(err.to_string().contains("request timeout"), "{err}");
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
    drop(silent);
}

/// One overall deadline per operation: with per-step limits and retries
/// that would add up to 40 s (10 s request timeout, 3 retries), a server
/// that accepts TCP but never answers holds the client for the deadline
/// only, and the error says which limit ran out.
#[test]
fn the_operation_deadline_bounds_retries_and_step_timeouts() {
    let kms = Kms::start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let endpoint = Endpoint {
        server: address.clone(),
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
    };
    let client = KmipClient::new(endpoint, &identity(&kms), 3).unwrap();
    let started = Instant::now();
    let err = client
        .ping(&Deadline::after(Duration::from_millis(800)))
        .unwrap_err();
    let waited = started.elapsed();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("operation timeout"), "{err}");
    assert!(
        waited < Duration::from_millis(1500),
        "gave up after {waited:?}"
    );

    // The same through the provider, whose operations each get the
    // configured deadline: listing versions is several requests.
    let provider = KmipProvider::new(
        "silent",
        KmipConfig {
            server: address.clone(),
            connect_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            retries: 3,
            operation_timeout_ms: 800,
            ..config(&kms, WrapMode::Server)
        },
    );
    let started = Instant::now();
    let err = provider.current_kek().unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, ProviderError::KmsUnreachable { .. }), "{err}");
    assert!(err.to_string().contains(&address), "{err}");
    assert!(
        waited < Duration::from_millis(1500),
        "gave up after {waited:?}"
    );
    drop(silent);
}
