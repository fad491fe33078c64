//! Images for real: OCI layouts and archives on disk, and a real registry (Debian's
//! docker-registry, started on loopback by `deploy/test.sh`) that skopeo pushes to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::oci::{self, Entry};
use common::{Sandbox, AGENT};
use orch_agent::cgroups::Limits;
use orch_agent::images::{resolve_process, ImageAccounts, ImageError, ImageStore, RegistrySettings};
use orch_agent::runtime::exec::ExecRequest;
use orch_agent::runtime::{ContainerSpec, Runtime, RuntimeConfig, Security, Stdio};

fn store(sandbox: &Sandbox) -> ImageStore {
    ImageStore::open(&sandbox.state_dir().join("images"), RegistrySettings::default()).expect("image store")
}

fn unique_repository(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("orch-test/{test}-{}-{nanos}", std::process::id())
}

/// A container spec from the image's layers and defaults, running `args` (the image's
/// Cmd replaced, as `docker run IMAGE ARGS`) with its output in `<id>.log`.
fn spec_in_image(sandbox: &Sandbox, store: &ImageStore, reference: &str, id: &str, args: &[&str]) -> ContainerSpec {
    let record = store.get(reference).expect("pulled");
    let layers = store.lower_dirs(&record).expect("layers");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let process = resolve_process(&record.defaults, &[], &args, &[], &ImageAccounts::read(&layers)).expect("process");
    ContainerSpec {
        id: id.to_owned(),
        layers,
        hostname: None,
        args: process.args,
        env: process.env,
        cwd: process.cwd,
        limits: Limits::default(),
        stdio: Stdio::log_file(sandbox.root.path().join(format!("{id}.log"))),
        user_namespace: None,
        user: process.user,
        image: Some(record.manifest_digest),
        mounts: vec![],
        security: Security::default(),
        system: None,
        stop_signal: orch_api::signal::SIGTERM,
    }
}

fn runtime(sandbox: &Sandbox) -> Runtime {
    Runtime::new(RuntimeConfig { state_dir: sandbox.state_dir(), cgroup_parent: sandbox.cgroup_parent.clone(), init_exe: PathBuf::from(AGENT) })
        .expect("runtime")
}

/// Runs `script` in a container from the image's layers; returns (exit code, output).
async fn run_in_image(sandbox: &Sandbox, store: &ImageStore, reference: &str, id: &str, script: &str) -> (i32, String) {
    let spec = spec_in_image(sandbox, store, reference, id, &["sh", "-c", script]);
    let container = runtime(sandbox).start(&spec).await.expect("start");
    let exit = container.wait().await;
    container.remove().await.expect("remove");
    (exit.code, common::log_text(&sandbox.root.path().join(format!("{id}.log"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_by_digest_from_a_registry_and_run_it() {
    let sandbox = Sandbox::new("img-registry");
    let (registry, _) = oci::registry();
    let layout = sandbox.root.path().join("layout");
    let manifest =
        oci::write_layout(&layout, "v1", &[oci::busybox_layer(), oci::layer(&[Entry::File("hello.txt", b"hello from a layer\n")])], &["cat", "/hello.txt"]);
    let repository = unique_repository("pull");
    oci::push(&layout, "v1", &registry, &repository);

    let images = store(&sandbox);
    let by_tag = format!("{registry}/{repository}:v1");
    let (record, report) = images.pull(&by_tag).await.expect("pull by tag");
    assert_eq!(record.manifest_digest, manifest);
    assert_eq!(record.layers.len(), 2);
    assert_eq!((report.blobs_fetched, report.layers_unpacked), (3, 2), "config and two layers: {report:?}");
    assert_eq!(record.defaults.cmd, ["cat", "/hello.txt"]);

    let by_digest = format!("{registry}/{repository}@{manifest}");
    let (pinned, _) = images.pull(&by_digest).await.expect("pull by digest");
    assert_eq!(pinned.manifest_digest, manifest);

    // The image's Cmd and Env are the defaults.
    let (code, output) = run_in_image(&sandbox, &images, &by_tag, "from-registry", "cat /hello.txt; echo $FROM_IMAGE").await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, "hello from a layer\nyes\n");
    sandbox.assert_clean("from-registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pull_downloads_no_layer_and_concurrent_pulls_fetch_once() {
    let sandbox = Sandbox::new("img-cache");
    let (registry, _) = oci::registry();
    let layout = sandbox.root.path().join("layout");
    oci::write_layout(&layout, "v1", &[oci::layer(&[Entry::File("a", b"a")]), oci::layer(&[Entry::File("b", b"b")])], &["true"]);
    let repository = unique_repository("cache");
    oci::push(&layout, "v1", &registry, &repository);
    let reference = format!("{registry}/{repository}:v1");

    let images = std::sync::Arc::new(store(&sandbox));
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let images = std::sync::Arc::clone(&images);
            let reference = reference.clone();
            tokio::spawn(async move { images.pull(&reference).await.expect("pull").1 })
        })
        .collect();
    let mut fetched = 0;
    let mut unpacked = 0;
    for pull in pulls {
        let report = pull.await.expect("task");
        fetched += report.blobs_fetched;
        unpacked += report.layers_unpacked;
    }
    assert_eq!((fetched, unpacked), (3, 2), "four concurrent pulls fetch each blob and unpack each layer once");

    let (_, again) = images.pull(&reference).await.expect("pull again");
    assert_eq!(again.blobs_fetched, 0, "no blob re-downloaded: {again:?}");
    assert_eq!((again.layers_cached, again.layers_unpacked), (2, 0), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let sandbox = Sandbox::new("img-corrupt");
    let (registry, storage) = oci::registry();
    let layout = sandbox.root.path().join("layout");
    // Unique content, so no other test shares this blob in the registry.
    let marker = format!("corrupt-me {:?}", std::time::SystemTime::now());
    let data: &'static [u8] = Box::leak(marker.into_bytes().into_boxed_slice());
    let layer = oci::layer(&[Entry::File("victim", data)]);
    let layer_digest = oci::sha256(&layer);
    oci::write_layout(&layout, "v1", std::slice::from_ref(&layer), &["true"]);
    let repository = unique_repository("corrupt");
    oci::push(&layout, "v1", &registry, &repository);

    // Flip bytes of the layer as the registry stores it: it serves them unchecked.
    let blob = oci::registry_blob_path(&storage, &layer_digest);
    let mut bytes = std::fs::read(&blob).expect("registry blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    bytes[10] ^= 0xff;
    std::fs::write(&blob, &bytes).expect("tamper");

    let images = store(&sandbox);
    let reference = format!("{registry}/{repository}:v1");
    let err = images.pull(&reference).await.expect_err("a corrupted blob must be refused");
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&layer_digest), "the error names the blob: {err}");
    let hex = &layer_digest["sha256:".len()..];
    assert!(!images.root().join("blobs/sha256").join(hex).exists(), "the bad blob was stored");
    assert!(!images.root().join("layers/sha256").join(hex).exists(), "the bad layer was unpacked");
    assert!(images.get(&reference).is_err(), "no image record for a failed pull");
    assert_eq!(std::fs::read_dir(images.root().join("tmp")).expect("tmp").count(), 0, "scratch files left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cached_blob_is_fetched_again_not_used() {
    let sandbox = Sandbox::new("img-recache");
    let layout = sandbox.root.path().join("layout");
    let config_layer = oci::layer(&[Entry::File("f", b"data")]);
    oci::write_layout(&layout, "v1", std::slice::from_ref(&config_layer), &["true"]);
    let images = store(&sandbox);
    let reference = format!("oci:{}:v1", layout.display());
    let (record, _) = images.pull(&reference).await.expect("pull");
    // Truncate the stored config blob; the next pull must notice and fetch it again.
    let config = images.root().join("blobs/sha256").join(&record.config_digest["sha256:".len()..]);
    let bytes = std::fs::read(&config).expect("config blob");
    std::fs::write(&config, &bytes[..bytes.len() / 2]).expect("truncate");
    let (_, report) = images.pull(&reference).await.expect("pull again");
    assert_eq!(report.blobs_refetched, 1, "{report:?}");
    assert_eq!(std::fs::read(&config).expect("config blob"), bytes, "the blob is whole again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whiteouts_and_opaque_directories_give_the_right_tree() {
    let sandbox = Sandbox::new("img-whiteout");
    let layout = sandbox.root.path().join("layout");
    let base = oci::layer(&[
        Entry::Dir("a"),
        Entry::File("a/x", b"x"),
        Entry::File("a/y", b"y"),
        Entry::Dir("b"),
        Entry::File("b/old", b"old"),
        Entry::File("c", b"c"),
        Entry::Symlink("link", "/a/y"),
    ]);
    let top = oci::layer(&[
        Entry::File("a/.wh.x", b""),
        Entry::Dir("b"),
        Entry::File("b/.wh..wh..opq", b""),
        Entry::File("b/new", b"new"),
        Entry::File(".wh.c", b""),
        Entry::File("d", b"d"),
    ]);
    // The middle layer goes uncompressed: plain tar layers are unpacked too.
    oci::write_layout(&layout, "v1", &[oci::busybox_layer(), oci::uncompressed(&base), top], &["true"]);
    let images = store(&sandbox);
    let reference = format!("oci:{}:v1", layout.display());
    images.pull(&reference).await.expect("pull");
    let (code, output) = run_in_image(
        &sandbox,
        &images,
        &reference,
        "whiteouts",
        "ls /a | tr '\\n' ' '; echo; ls /b | tr '\\n' ' '; echo; test -e /c && echo c-exists; cat /link /d",
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, "y \nnew \nyd", "a/x whited out, b opaque, c removed, symlink and new file present");
    sandbox.assert_clean("whiteouts");
}

/// Images built from root filesystems carry device nodes and FIFOs: they are left out
/// (never made on the node), and the rest of the image runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_and_fifos_in_a_layer_are_skipped() {
    let sandbox = Sandbox::new("img-devices");
    let layout = sandbox.root.path().join("layout");
    let specials = oci::layer(&[
        Entry::Dir("dev"),
        Entry::CharDevice("dev/console"),
        Entry::CharDevice("dev/mem"),
        Entry::BlockDevice("dev/sda"),
        Entry::Fifo("run/initctl"),
        Entry::File("etc/kept", b"kept"),
    ]);
    oci::write_layout(&layout, "v1", &[oci::busybox_layer(), specials], &["true"]);
    let images = store(&sandbox);
    let reference = format!("oci:{}:v1", layout.display());
    let (record, _) = images.pull(&reference).await.expect("an image with device nodes pulls");
    let top = images.lower_dirs(&record).expect("layers").into_iter().next().expect("the top layer, first");
    for special in ["dev/console", "dev/mem", "dev/sda", "run/initctl"] {
        assert!(std::fs::symlink_metadata(top.join(special)).is_err(), "{special} was made in the layer");
    }
    let (code, output) = run_in_image(&sandbox, &images, &reference, "specials", "cat /etc/kept; test -p /run/initctl || printf ' no-fifo'").await;
    assert_eq!((code, output.as_str()), (0, "kept no-fifo"), "the rest of the layer is there");
    sandbox.assert_clean("specials");
}

/// `USER app` and `USER app:web` from the image's own /etc/passwd and /etc/group, as
/// official images name their users: the ids, and the supplementary groups that list
/// the user (none with an explicit group), for the command and for an exec alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_image_user_runs_as_the_image_says() {
    let sandbox = Sandbox::new("img-user");
    let images = store(&sandbox);
    let accounts = || {
        oci::layer(&[
            Entry::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:2345::/home/app:/bin/sh\n"),
            Entry::File("etc/group", b"root:x:0:\napp:x:2345:\nweb:x:3456:app\nops:x:4567:other,app\nelse:x:5678:other\n"),
        ])
    };
    let ids = "printf '%s %s %s' $(id -u) $(id -g) \"$(id -G)\"";
    for (tag, user, want) in
        [("named", "app", "1234 2345 2345 3456 4567"), ("grouped", "app:web", "1234 3456 3456"), ("numeric", "1234", "1234 2345 2345 3456 4567")]
    {
        let layout = sandbox.root.path().join(tag);
        oci::write_layout_as(&layout, "v1", &[oci::busybox_layer(), accounts()], &["true"], Some(user));
        let reference = format!("oci:{}:v1", layout.display());
        images.pull(&reference).await.expect("pull");
        let (code, output) = run_in_image(&sandbox, &images, &reference, tag, ids).await;
        assert_eq!((code, output.as_str()), (0, want), "USER {user}");
    }

    // An exec into the container runs as its user too, groups included.
    let reference = format!("oci:{}:v1", sandbox.root.path().join("named").display());
    let spec = spec_in_image(&sandbox, &images, &reference, "user-exec", &["sleep", "1000"]);
    let runtime = runtime(&sandbox);
    let container = runtime.start(&spec).await.expect("start");
    let exec = ExecRequest {
        pid: container.host_pid(),
        cgroups: container.cgroup_paths().iter().map(|p| p.display().to_string()).collect(),
        user: spec.user.clone(),
        capabilities: spec.security.capabilities.clone(),
        seccomp: spec.security.seccomp,
        env: spec.env.clone(),
        command: vec!["sh".into(), "-c".into(), ids.into()],
        ..ExecRequest::default()
    };
    let output = exec.helper_command(std::path::Path::new(AGENT)).output().await.expect("run the exec helper");
    container.kill().await;
    container.remove().await.expect("remove");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "1234 2345 2345 3456 4567", "exec: {}", String::from_utf8_lossy(&output.stderr));

    let layout = sandbox.root.path().join("unknown");
    oci::write_layout_as(&layout, "v1", &[oci::busybox_layer(), accounts()], &["true"], Some("nobody"));
    let reference = format!("oci:{}:v1", layout.display());
    let (record, _) = images.pull(&reference).await.expect("pull");
    let layers = images.lower_dirs(&record).expect("layers");
    let refused = resolve_process(&record.defaults, &[], &[], &[], &ImageAccounts::read(&layers)).expect_err("an unknown user");
    assert!(refused.contains("no user \"nobody\" in the image's /etc/passwd"), "{refused}");
    sandbox.assert_clean("img-user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_layers_and_archives_are_rejected() {
    let sandbox = Sandbox::new("img-unsafe");
    let images = store(&sandbox);
    let cases: [(&str, Vec<Entry>, &str); 4] = [
        ("dotdot", vec![Entry::RawPath("../evil", b"x")], "leaves the layer root"),
        ("deep-dotdot", vec![Entry::RawPath("a/../../evil", b"x")], "leaves the layer root"),
        ("hardlink-out", vec![Entry::HardLink("passwd", "../../etc/passwd")], "leaves the layer root"),
        ("through-symlink", vec![Entry::Symlink("etc", "/etc"), Entry::File("etc/evil", b"x")], "is a symlink"),
    ];
    for (name, entries, reason) in cases {
        let layout = sandbox.root.path().join(name);
        oci::write_layout(&layout, "v1", &[oci::layer(&entries)], &["true"]);
        let err = images.pull(&format!("oci:{}:v1", layout.display())).await.expect_err(name);
        assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{name}: {err}");
        assert!(err.to_string().contains(reason), "{name}: {err}");
    }
    assert!(!std::path::Path::new("/etc/evil").exists());
    assert!(!sandbox.state_dir().join("images/evil").exists() && !sandbox.state_dir().join("evil").exists());
    assert_eq!(std::fs::read_dir(images.root().join("layers/sha256")).expect("layers").count(), 0, "no unsafe layer kept");
    assert_eq!(std::fs::read_dir(images.root().join("tmp")).expect("tmp").count(), 0, "scratch left");

    // An oci-archive whose own tar escapes its root is refused before anything is read.
    let archive_path = sandbox.root.path().join("evil-archive.tar");
    std::fs::write(&archive_path, {
        let mut raw = Vec::new();
        std::io::copy(&mut flate2::read::GzDecoder::new(oci::layer(&[Entry::RawPath("../outside", b"x")]).as_slice()), &mut raw).expect("gunzip");
        raw
    })
    .expect("write archive");
    let err = images.pull(&format!("oci-archive:{}:v1", archive_path.display())).await.expect_err("archive with ../");
    assert!(err.to_string().contains("../outside") && err.to_string().contains("leaves the layer root"), "{err}");
    assert!(!images.root().join("outside").exists() && !images.root().join("tmp/outside").exists());
}

/// A gzip bomb (a layer of 256 MiB of zeros, 1.2 MB compressed) and a layer of too many
/// entries are refused at the first entry over the node's limits; nothing of them stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_over_the_limits_are_refused() {
    let sandbox = Sandbox::new("img-limits");
    let limits = orch_agent::images::LayerLimits { max_bytes: 64 << 20, max_entries: 100 };
    let images = store(&sandbox).with_layer_limits(limits);
    let zeros: &'static [u8] = Box::leak(vec![0u8; 256 << 20].into_boxed_slice());
    let bomb = oci::layer(&[Entry::File("zeros", zeros)]);
    assert!(bomb.len() < 2 << 20, "{} bytes compressed", bomb.len());
    let layout = sandbox.root.path().join("bomb");
    oci::write_layout(&layout, "v1", &[bomb], &["true"]);
    let err = images.pull(&format!("oci:{}:v1", layout.display())).await.expect_err("a gzip bomb");
    assert!(err.to_string().contains("more than 67108864 bytes unpacked (the node's --max-layer-size)"), "{err}");

    let names: Vec<String> = (0..101).map(|n| format!("f{n}")).collect();
    let entries: Vec<Entry> = names.iter().map(|name| Entry::File(Box::leak(name.clone().into_boxed_str()), b"x")).collect();
    let layout = sandbox.root.path().join("many");
    oci::write_layout(&layout, "v1", &[oci::layer(&entries)], &["true"]);
    let err = images.pull(&format!("oci:{}:v1", layout.display())).await.expect_err("too many entries");
    assert!(err.to_string().contains("more than 100 entries (the node's --max-layer-entries)"), "{err}");
    assert_eq!(std::fs::read_dir(images.root().join("layers/sha256")).expect("layers").count(), 0, "no refused layer kept");
    assert_eq!(std::fs::read_dir(images.root().join("tmp")).expect("tmp").count(), 0, "scratch left");

    // A PAX record may declare a size the tar header does not: it counts.
    let hidden = oci::layer(&[Entry::PaxSized("zeros", 0, zeros)]);
    let layout = sandbox.root.path().join("pax-size");
    oci::write_layout(&layout, "v1", &[hidden], &["true"]);
    let err = images.pull(&format!("oci:{}:v1", layout.display())).await.expect_err("a size in a PAX record");
    assert!(err.to_string().contains("more than 67108864 bytes unpacked (the node's --max-layer-size)"), "{err}");

    // Headers are read into memory whole: one entry's may not be huge.
    let layout = sandbox.root.path().join("pax-huge");
    oci::write_layout(&layout, "v1", &[oci::layer(&[Entry::PaxPadded("f", 3 << 20)])], &["true"]);
    let err = images.pull(&format!("oci:{}:v1", layout.display())).await.expect_err("a 3 MiB PAX record");
    assert!(err.to_string().contains("more than 1024 KiB of tar headers, long names or PAX records for one entry"), "{err}");
    assert_eq!(std::fs::read_dir(images.root().join("tmp")).expect("tmp").count(), 0, "scratch left");

    // A blob the manifest declares larger than the limit is not even fetched.
    let small = store(&sandbox).with_layer_limits(orch_agent::images::LayerLimits { max_bytes: 1500, max_entries: 100 });
    let layer = oci::uncompressed(&oci::layer(&[Entry::File("f", &[7u8; 600])]));
    assert!(layer.len() > 1500, "{} bytes", layer.len());
    let blob = images.root().join("blobs/sha256").join(format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&layer)));
    let layout = sandbox.root.path().join("big-blob");
    oci::write_layout(&layout, "v1", &[layer], &["true"]);
    let err = small.pull(&format!("oci:{}:v1", layout.display())).await.expect_err("a blob over the limit");
    assert!(err.to_string().contains("over the node's --max-layer-size (1500 bytes)"), "{err}");
    assert!(!blob.exists(), "the layer was fetched");

    // At the limits exactly, a layer is fine, PAX records included.
    let layout = sandbox.root.path().join("pax-fine");
    oci::write_layout(&layout, "v1", &[oci::layer(&[Entry::PaxPadded("f", 4096), Entry::PaxSized("g", 0, b"hello")])], &["true"]);
    images.pull(&format!("oci:{}:v1", layout.display())).await.expect("small PAX records");
    let layout = sandbox.root.path().join("fits");
    oci::write_layout(&layout, "v1", &[oci::layer(&entries[..100])], &["true"]);
    images.pull(&format!("oci:{}:v1", layout.display())).await.expect("100 entries fit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_work_like_layouts() {
    let sandbox = Sandbox::new("img-archive");
    let layout = sandbox.root.path().join("layout");
    let manifest = oci::write_layout(&layout, "v2", &[oci::layer(&[Entry::File("f", b"1")])], &["true"]);
    let archive = sandbox.root.path().join("image.tar");
    oci::archive_layout(&layout, &archive);
    let images = store(&sandbox);
    let (record, _) = images.pull(&format!("oci-archive:{}:v2", archive.display())).await.expect("pull archive");
    assert_eq!(record.manifest_digest, manifest);
    let err = images.pull(&format!("oci-archive:{}:nope", archive.display())).await.expect_err("unknown tag");
    assert!(err.to_string().contains("no manifest tagged \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_images_containers_use() {
    let sandbox = Sandbox::new("img-prune");
    let images = store(&sandbox);
    let used_layout = sandbox.root.path().join("used");
    let unused_layout = sandbox.root.path().join("unused");
    oci::write_layout(&used_layout, "v1", &[oci::busybox_layer()], &["sleep", "1000"]);
    oci::write_layout(&unused_layout, "v1", &[oci::layer(&[Entry::File("only-here", b"x")])], &["true"]);
    let used = format!("oci:{}:v1", used_layout.display());
    let unused = format!("oci:{}:v1", unused_layout.display());
    let (used_record, _) = images.pull(&used).await.expect("pull");
    images.pull(&unused).await.expect("pull");

    let runtime = runtime(&sandbox);
    let container = runtime.start(&spec_in_image(&sandbox, &images, &used, "user", &[])).await.expect("start");
    assert_eq!(runtime.images_in_use(), BTreeSet::from([used_record.manifest_digest.clone()]));

    let report = images.prune(&runtime.images_in_use()).expect("prune");
    assert_eq!(report.images_removed, vec![unused.clone()]);
    assert_eq!((report.layers_removed, report.blobs_removed), (1, 3), "{report:?}");
    assert!(images.get(&used).is_ok() && images.get(&unused).is_err());
    for dir in images.lower_dirs(&used_record).expect("layers") {
        assert!(dir.exists(), "a layer of the running container was removed");
    }

    let exit = container.stop(Duration::from_secs(10), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 143);
    container.remove().await.expect("remove");
    let report = images.prune(&runtime.images_in_use()).expect("prune");
    assert_eq!(report.images_removed, vec![used]);
    sandbox.assert_clean("user");
}

/// Docker's formats as registries serve them: a schema 2 manifest (skopeo converts on
/// push), and an OCI index and a Docker manifest list from which linux/amd64 is picked
/// whatever its place in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manifests_and_multi_platform_lists_pull() {
    let sandbox = Sandbox::new("img-formats");
    let (registry, _) = oci::registry();
    let images = store(&sandbox);

    let layout = sandbox.root.path().join("single");
    oci::write_layout(&layout, "v1", &[oci::busybox_layer(), oci::layer(&[Entry::File("which", b"docker-format")])], &["cat", "/which"]);
    let repository = unique_repository("v2s2");
    oci::push_as(&layout, "v1", &registry, &repository, &["--format", "v2s2"]);
    let reference = format!("{registry}/{repository}:v1");
    let (record, _) = images.pull(&reference).await.expect("a Docker schema 2 manifest pulls");
    let manifest = std::fs::read(images.root().join("blobs/sha256").join(&record.manifest_digest["sha256:".len()..])).expect("the manifest blob");
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest).expect("json")["mediaType"].clone();
    assert_eq!(media_type, "application/vnd.docker.distribution.manifest.v2+json", "skopeo pushed Docker's format");
    let (code, output) = run_in_image(&sandbox, &images, &reference, "v2s2", "cat /which").await;
    assert_eq!((code, output.as_str()), (0, "docker-format"));

    let layout = sandbox.root.path().join("multi");
    let arch = |name: &'static str, content: &'static [u8]| (name, vec![oci::busybox_layer(), oci::layer(&[Entry::File("arch", content)])]);
    let (_, manifests) =
        oci::write_multi_platform_layout(&layout, "v1", &[arch("arm64", b"arm64"), arch("amd64", b"amd64"), arch("s390x", b"s390x")], &["true"]);
    for (format, flags) in [("oci-index", vec!["--all"]), ("manifest-list", vec!["--all", "--format", "v2s2"])] {
        let repository = unique_repository(format);
        oci::push_as(&layout, "v1", &registry, &repository, &flags);
        let reference = format!("{registry}/{repository}:v1");
        let raw = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .expect("skopeo");
        let served = serde_json::from_slice::<serde_json::Value>(&raw.stdout).expect("the registry's manifest")["mediaType"].clone();
        let want = if format == "oci-index" { "application/vnd.oci.image.index.v1+json" } else { "application/vnd.docker.distribution.manifest.list.v2+json" };
        assert_eq!(served, want, "the registry serves a {format}");
        let (record, _) = images.pull(&reference).await.unwrap_or_else(|e| panic!("{format}: {e}"));
        if format == "oci-index" {
            assert_eq!(record.manifest_digest, manifests[1], "the amd64 entry, second in the index");
        }
        let (code, output) = run_in_image(&sandbox, &images, &reference, format, "cat /arch").await;
        assert_eq!((code, output.as_str()), (0, "amd64"), "{format}");
    }
    let only_arm = sandbox.root.path().join("arm");
    oci::write_multi_platform_layout(&only_arm, "v1", &[arch("arm64", b"arm64")], &["true"]);
    let repository = unique_repository("arm-only");
    oci::push_as(&only_arm, "v1", &registry, &repository, &["--all"]);
    let refused = images.pull(&format!("{registry}/{repository}:v1")).await.expect_err("no amd64 image");
    assert!(refused.to_string().contains("the index has no linux/amd64 image"), "{refused}");
    sandbox.assert_clean("img-formats");
}

/// A registry behind htpasswd: refused clearly without credentials, pulled with them
/// from a root-only registry config, and the config itself refused when others may
/// read it or the password is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_requires_credentials() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("img-auth");
    let (registry, credentials) = oci::auth_registry();
    let (user, password) = credentials.split_once(':').expect("USER:PASSWORD");
    let layout = sandbox.root.path().join("layout");
    oci::write_layout(&layout, "v1", &[oci::layer(&[Entry::File("secret-image", b"1")])], &["true"]);
    let repository = unique_repository("auth");
    oci::push_as(&layout, "v1", &registry, &repository, &["--dest-creds", &credentials]);
    let reference = format!("{registry}/{repository}:v1");

    let anonymous = store(&sandbox);
    let refused = anonymous.pull(&reference).await.expect_err("no credentials").to_string();
    assert!(
        refused.contains(&format!("registry {registry}: requires credentials, and the registry config has none for it (auths.\"{registry}\"")),
        "{refused}"
    );

    let config = sandbox.root.path().join("registries.json");
    let write_config = |password: &str, mode: u32| {
        let text = serde_json::json!({"auths": {registry.clone(): {"username": user, "password": password}}});
        std::fs::write(&config, text.to_string()).expect("write the registry config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let settings = RegistrySettings { path: Some(config.clone()), required: true };
    let with_config = ImageStore::open(&sandbox.state_dir().join("images-auth"), settings).expect("image store");
    write_config("wrong", 0o600);
    let refused = with_config.pull(&reference).await.expect_err("a wrong password").to_string();
    assert!(refused.contains(&format!("refused the credentials for {registry} in {}", config.display())), "{refused}");
    write_config(password, 0o644);
    let refused = with_config.pull(&reference).await.expect_err("a config others may read").to_string();
    assert!(refused.contains("chmod 600") && refused.contains(&config.display().to_string()), "{refused}");
    assert!(!refused.contains(password), "the password is never in an error: {refused}");
    write_config(password, 0o600);
    let (record, report) = with_config.pull(&reference).await.expect("pull with credentials (read again for each pull: no restart)");
    assert_eq!((record.layers.len(), report.layers_unpacked), (1, 1));
}

/// A tag moved in the registry: the node's record stays what it pulled (what
/// `IfNotPresent` runs) until a pull (what `Always` does before every start) resolves
/// the tag again and gets the new image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_a_new_image_on_the_next_pull() {
    let sandbox = Sandbox::new("img-moved");
    let (registry, _) = oci::registry();
    let images = store(&sandbox);
    let repository = unique_repository("moved");
    let reference = format!("{registry}/{repository}:latest");
    let mut digests = Vec::new();
    let busybox = oci::busybox_layer(); // one blob for both (a new one would carry other mtimes)
    for (version, content) in [("one", b"first" as &[u8]), ("two", b"second")] {
        let layout = sandbox.root.path().join(version);
        digests.push(oci::write_layout(&layout, "latest", &[busybox.clone(), oci::layer(&[Entry::File("version", content)])], &["true"]));
        oci::push(&layout, "latest", &registry, &repository);
        if version == "one" {
            let (record, _) = images.pull(&reference).await.expect("pull the first");
            assert_eq!(record.manifest_digest, digests[0]);
        }
    }
    assert_eq!(images.get(&reference).expect("on the node").manifest_digest, digests[0], "the node keeps what it pulled");
    let (record, report) = images.pull(&reference).await.expect("pull again");
    assert_eq!(record.manifest_digest, digests[1], "the tag now names the second image");
    assert_eq!((report.layers_cached, report.layers_unpacked), (1, 1), "the shared busybox layer is not fetched again");
    let (code, output) = run_in_image(&sandbox, &images, &reference, "moved", "cat /version").await;
    assert_eq!((code, output.as_str()), (0, "second"));
    sandbox.assert_clean("img-moved");
}

/// Mirrors (k3s' shape): a reference's registry is reached through its mirror endpoints
/// first, then itself — so one manifest names one registry everywhere while each node
/// says where that registry really is. Only loopback is dialled: port 1 refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_serves_the_registry_a_reference_names() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("img-mirror");
    let (registry, _) = oci::registry();
    let layout = sandbox.root.path().join("layout");
    let manifest = oci::write_layout(&layout, "v1", &[oci::layer(&[Entry::File("mirrored", b"1")])], &["true"]);
    let repository = unique_repository("mirror");
    oci::push(&layout, "v1", &registry, &repository);
    let config = sandbox.root.path().join("registries.json");
    let images = ImageStore::open(&sandbox.state_dir().join("images-mirror"), RegistrySettings { path: Some(config.clone()), required: true }).expect("store");
    let write_config = |mirrors: serde_json::Value| {
        std::fs::write(&config, serde_json::json!({ "mirrors": mirrors }).to_string()).expect("write");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };

    // The reference names a registry nobody serves; its mirror has the image.
    write_config(serde_json::json!({"127.0.0.1:1": {"endpoint": [format!("http://{registry}")]}}));
    let (record, _) = images.pull(&format!("127.0.0.1:1/{repository}:v1")).await.expect("pulled through the mirror");
    assert_eq!((record.manifest_digest.as_str(), record.reference.as_str()), (manifest.as_str(), format!("127.0.0.1:1/{repository}:v1").as_str()));

    // A dead mirror: the registry itself still serves.
    write_config(serde_json::json!({registry.clone(): {"endpoint": ["127.0.0.1:1"]}}));
    let (record, _) = images.pull(&format!("{registry}/{repository}:v1")).await.expect("the registry after its dead mirror");
    assert_eq!(record.manifest_digest, manifest);

    // Nothing answers: every endpoint is named.
    write_config(serde_json::json!({"127.0.0.1:1": {"endpoint": ["127.0.0.1:2"]}}));
    let refused = images.pull(&format!("127.0.0.1:1/{repository}:v1")).await.expect_err("no endpoint").to_string();
    assert!(refused.contains("no endpoint served") && refused.contains("127.0.0.1:2: ") && refused.contains("127.0.0.1:1: "), "{refused}");
}
