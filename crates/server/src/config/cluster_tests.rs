use std::time::Duration;

use super::*;
use crate::config::test_support::{config_file, env};
use crate::config::{Config, Overrides};

const SECRET: &str = "0123456789abcdef-cluster";

#[test]
fn absent_sections_are_off() {
    let s = Config::load(None, &env(&[]), &Overrides::default()).unwrap();
    assert!(s.cluster.is_none());
    assert!(s.shared.is_none());
    // The advertise variable alone does not turn the cluster on.
    let s = Config::load(
        None,
        &env(&[(ADVERTISE_ENV, "10.0.0.9:5002")]),
        &Overrides::default(),
    )
    .unwrap();
    assert!(s.cluster.is_none());
}

#[test]
fn static_cluster_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let (_d, file) = config_file(&format!(
        "[cluster]\nlisten = \"127.0.0.1:5002\"\npeers = [\"127.0.0.1:5002\", \"10.0.0.6:5002\", \"[::1]:5002\", \"peer-b.example:5002\"]\nsecret_file = {:?}\n",
        secret.display().to_string()
    ));
    let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
    let c = s.cluster.unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:5002");
    assert_eq!(c.advertise, "127.0.0.1:5002", "defaults to listen");
    assert_eq!(
        c.peers,
        PeerSource::Static(vec![
            "127.0.0.1:5002".into(),
            "10.0.0.6:5002".into(),
            "[::1]:5002".into(),
            "peer-b.example:5002".into()
        ])
    );
    assert_eq!(c.refresh, Duration::from_secs(2));
    assert!(c.secret.matches(SECRET), "trailing newline trimmed");
    assert!(!c.secret.matches("0123456789abcdef-clustex"));
    assert!(!c.secret.matches(""));
    assert!(s.shared.is_none(), "[cluster] without [shared] is fine");
}

#[test]
fn advertise_from_the_environment_wins_and_dns_peers() {
    let (_d, file) = config_file(
        "[cluster]\nlisten = \"0.0.0.0:5002\"\nadvertise = \"10.0.0.5:5002\"\n\
         peers_dns = \"regcache-peers.regcache.svc.cluster.local:5002\"\n\
         secret_env = \"MY_SECRET\"\nrefresh_secs = 5\n",
    );
    let e = env(&[("MY_SECRET", SECRET), (ADVERTISE_ENV, "10.1.2.3:5002")]);
    let c = Config::load(Some(&file), &e, &Overrides::default())
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.advertise, "10.1.2.3:5002");
    assert_eq!(
        c.peers,
        PeerSource::Dns {
            host: "regcache-peers.regcache.svc.cluster.local".into(),
            port: 5002
        }
    );
    assert_eq!(c.refresh, Duration::from_secs(5));
    let e = env(&[("MY_SECRET", SECRET)]);
    let c = Config::load(Some(&file), &e, &Overrides::default())
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.advertise, "10.0.0.5:5002");
}

#[test]
fn the_default_secret_variable() {
    let (_d, file) =
        config_file("[cluster]\nlisten = \"127.0.0.1:5002\"\npeers = [\"127.0.0.1:5003\"]\n");
    let e = env(&[(DEFAULT_SECRET_ENV, SECRET)]);
    let c = Config::load(Some(&file), &e, &Overrides::default())
        .unwrap()
        .cluster
        .unwrap();
    assert!(c.secret.matches(SECRET));
    let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
    assert!(
        err.to_string().contains("the shared secret is required"),
        "{err}"
    );
}

#[test]
fn every_cluster_problem_is_reported_at_once() {
    let (_d, file) = config_file(
        "listen = \"0.0.0.0:5000\"\nadmin_listen = \"127.0.0.1:5001\"\n\
         [cluster]\nlisten = \"0.0.0.0:5001\"\npeers = [\"nohost\", \"a:0\", \"ok:1\"]\n\
         peers_dns = \"x:1\"\nsecret_env = \"SHORT\"\nrefresh_secs = 0\n",
    );
    let err = Config::load(
        Some(&file),
        &env(&[("SHORT", "tooshort")]),
        &Overrides::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    for want in [
        "cluster.listen (0.0.0.0:5001) must not share a port with admin_listen (127.0.0.1:5001)",
        "cluster.advertise is required when cluster.listen (0.0.0.0:5001) is every address",
        "give exactly one of peers",
        "the variable SHORT: the cluster secret is shorter than 16 bytes",
        "cluster.refresh_secs = 0 must be between 1 and 300",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
    assert!(
        !text.contains("tooshort"),
        "the secret is never echoed: {text}"
    );

    let (_d, file) = config_file(
        "[cluster]\nlisten = \"nonsense\"\nadvertise = \"0.0.0.0:5002\"\n\
         peers = [\"nohost\", \"[::1\", \"a:0\", \"b:5002\"]\n",
    );
    let err = Config::load(
        Some(&file),
        &env(&[(DEFAULT_SECRET_ENV, SECRET)]),
        &Overrides::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    for want in [
        "cluster.listen = \"nonsense\" is not an address",
        "cluster.advertise = \"0.0.0.0:5002\" is no address to reach",
        "cluster.peers: \"nohost\" is not host:port",
        "cluster.peers: \"[::1\" is not host:port",
        "cluster.peers: \"a:0\" is not host:port",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
    // The registry port too, and a missing listen.
    let (_d, file) = config_file(
        "listen = \"127.0.0.1:5000\"\n[cluster]\nlisten = \"[::]:5000\"\nadvertise = \"h:5000\"\npeers = []\n",
    );
    let err = Config::load(
        Some(&file),
        &env(&[(DEFAULT_SECRET_ENV, SECRET)]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("must not share a port with listen (127.0.0.1:5000)"),
        "{err}"
    );
    let (_d, file) = config_file("[cluster]\npeers = []\n");
    let err = Config::load(
        Some(&file),
        &env(&[(DEFAULT_SECRET_ENV, SECRET)]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cluster.listen is required"),
        "{err}"
    );
}

#[test]
fn unknown_keys_in_the_new_sections_are_refused() {
    let err = Config::from_toml(
        "[cluster]\nlisten = \"127.0.0.1:5002\"\npeer = []\n[shared]\nbuckett = \"x\"\n",
        "f.toml",
    )
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 2, "{text}");
    assert!(text.contains("unknown key `peer`"), "{text}");
    assert!(text.contains("unknown key `buckett`"), "{text}");
}

#[test]
fn secrets_are_not_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    let sk = dir.path().join("sk");
    std::fs::write(&sk, "s3-very-secret-key\n").unwrap();
    let (_d, file) = config_file(&format!(
        "[cluster]\nlisten = \"127.0.0.1:5002\"\npeers = [\"127.0.0.1:5003\"]\n\
         [shared]\nbucket = \"regcache\"\nendpoint = \"http://127.0.0.1:9000\"\n\
         access_key_id = \"AKIDEXAMPLE\"\nsecret_access_key_file = {:?}\n",
        sk.display().to_string()
    ));
    let s = Config::load(
        Some(&file),
        &env(&[(DEFAULT_SECRET_ENV, SECRET)]),
        &Overrides::default(),
    )
    .unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(!debug.contains("s3-very-secret-key"), "{debug}");
    assert!(debug.contains("AKIDEXAMPLE"), "{debug}");
    let shared = s.shared.unwrap();
    assert_eq!(
        shared.secret_access_key.as_deref(),
        Some("s3-very-secret-key")
    );
    assert!(shared.path_style, "default with an endpoint");
    assert_eq!(shared.region, "us-east-1");
    assert_eq!(shared.prefix, "");
}

#[test]
fn shared_without_cluster_and_its_problems() {
    let (_d, file) = config_file("[shared]\nbucket = \"b\"\nprefix = \"rc/\"\n");
    let s = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
    assert!(s.cluster.is_none());
    let shared = s.shared.unwrap();
    assert_eq!(shared.bucket, "b");
    assert_eq!(shared.prefix, "rc/");
    assert!(!shared.path_style, "AWS: virtual-hosted style by default");
    assert!(shared.access_key_id.is_none() && shared.secret_access_key.is_none());

    let (_d, file) =
        config_file("[shared]\nendpoint = \"ftp://x\"\nregion = \"\"\naccess_key_id = \"AK\"\n");
    let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
    let text = err.to_string();
    for want in [
        "shared.bucket is required",
        "shared.endpoint = \"ftp://x\" is not an http(s) URL",
        "shared.region must not be empty",
        "shared.access_key_id needs secret_access_key_file or secret_access_key_env",
    ] {
        assert!(text.contains(want), "{want:?} missing from {text}");
    }
    assert_eq!(err.problems.len(), 4, "{text}");
    let (_d, file) = config_file("[shared]\nbucket = \"b\"\nsecret_access_key_env = \"NOPE\"\n");
    let err = Config::load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("\"NOPE\", which is not set"), "{text}");
    assert!(
        text.contains("a secret access key needs access_key_id"),
        "{text}"
    );
}

#[test]
fn host_port_forms() {
    assert_eq!(host_port("a:1"), Some(("a", 1)));
    assert_eq!(host_port("[::1]:5002"), Some(("[::1]", 5002)));
    assert_eq!(host_port("::1:5002"), None, "IPv6 needs brackets");
    assert_eq!(host_port(":5002"), None);
    assert_eq!(host_port("a"), None);
    assert_eq!(host_port("a:70000"), None);
    assert_eq!(host_port("http://a:1"), None);
}
