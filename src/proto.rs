//! Generated protobuf messages and gRPC stubs (see `build.rs` and `proto/README.md`).
//!
//! Nothing here is hand-written except the module tree: the generated code names other
//! packages by relative paths (`super::super::pb::ProgressGroup`), so the nesting must mirror
//! the proto package names exactly. `google.protobuf` maps to `prost_types`.
//! Only `buildkit/` and `session/` use these types; conversions happen at their edges.

// Generated code: not ours to lint or document, and not every message or RPC is used.
#![allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    dead_code,
    unreachable_pub
)]

pub(crate) mod moby {
    pub(crate) mod buildkit {
        pub(crate) mod v1 {
            tonic::include_proto!("moby.buildkit.v1");

            pub(crate) mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }
        }

        pub(crate) mod secrets {
            pub(crate) mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }

    /// Also holds the `Auth` service: upstream puts it in this package, not `moby.auth`.
    pub(crate) mod filesync {
        pub(crate) mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }

    pub(crate) mod sshforward {
        pub(crate) mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
}

/// The gRPC rich error envelope (`google.rpc.Status`); its `google.protobuf.Any` details are `prost_types::Any`.
pub(crate) mod google {
    pub(crate) mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// containerd's content store, served for OCI layouts the daemon reads through the session.
pub(crate) mod containerd {
    pub(crate) mod services {
        pub(crate) mod content {
            pub(crate) mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
    }
}

pub(crate) mod pb {
    tonic::include_proto!("pb");
}

pub(crate) mod fsutil {
    pub(crate) mod types {
        tonic::include_proto!("fsutil.types");
    }
}

pub(crate) mod grpc {
    pub(crate) mod health {
        pub(crate) mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}

/// Encoded `prost_types::FileDescriptorSet` of the services we serve over the session
/// (Health, FileSync, Auth, Secrets, SSH) and their imports; used to list the served method paths.
pub(crate) const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/buildopt_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::fsutil::types::{Packet, Stat, packet::PacketType};

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn packet(kind: PacketType, id: u32, data: &[u8]) -> Packet {
        Packet {
            r#type: kind as i32,
            stat: None,
            id,
            data: prost::bytes::Bytes::copy_from_slice(data),
        }
    }

    fn stat_packet(path: &[u8], mode: u32) -> Packet {
        Packet {
            stat: Some(Stat {
                path: path.to_vec(),
                mode,
                ..Stat::default()
            }),
            ..packet(PacketType::PacketStat, 0, b"")
        }
    }

    /// The hand-checked encodings of buildkit-protocol.md Appendix B.
    #[test]
    fn packets_encode_like_appendix_b() {
        let cases = [
            (
                "end-of-list STAT",
                packet(PacketType::PacketStat, 0, b""),
                "",
            ),
            (
                "STAT file a 0644",
                stat_packet(b"a", 0o644),
                "12 06 0a 01 61 10 a4 03",
            ),
            (
                "STAT dir d 0755",
                stat_packet(b"d", 1 << 31 | 0o755),
                "12 09 0a 01 64 10 ed 83 80 80 08",
            ),
            (
                "REQ 5",
                packet(PacketType::PacketReq, 5, b""),
                "08 01 18 05",
            ),
            ("REQ 0", packet(PacketType::PacketReq, 0, b""), "08 01"),
            (
                "DATA 5 hi",
                packet(PacketType::PacketData, 5, b"hi"),
                "08 02 18 05 22 02 68 69",
            ),
            (
                "DATA 5 EOF",
                packet(PacketType::PacketData, 5, b""),
                "08 02 18 05",
            ),
            ("FIN", packet(PacketType::PacketFin, 0, b""), "08 03"),
            (
                "ERR x",
                packet(PacketType::PacketErr, 0, b"x"),
                "08 04 22 01 78",
            ),
        ];
        for (name, packet, want) in cases {
            let got = packet.encode_to_vec();
            assert_eq!(hex(&got), want, "{name}");
            assert_eq!(
                Packet::decode(got.as_slice()).unwrap(),
                packet,
                "{name} round trip"
            );
        }
    }

    /// prost pitfall (protocol §3.8): a present but empty Stat is not the end-of-list marker.
    #[test]
    fn empty_stat_is_not_the_end_of_list_marker() {
        let present = Packet {
            stat: Some(Stat::default()),
            ..packet(PacketType::PacketStat, 0, b"")
        };
        assert_eq!(hex(&present.encode_to_vec()), "12 00");
    }

    /// Stat.path and linkname are bytes so names that are not UTF-8 go out unchanged.
    #[test]
    fn stat_carries_non_utf8_names() {
        let stat = Stat {
            path: b"caf\xe9".to_vec(),
            linkname: b"\xff".to_vec(),
            mode: 1 << 27 | 0o777,
            ..Stat::default()
        };
        let encoded = stat.encode_to_vec();
        assert_eq!(hex(&encoded), "0a 04 63 61 66 e9 10 ff 83 80 40 3a 01 ff");
        assert_eq!(Stat::decode(encoded.as_slice()).unwrap(), stat);
    }

    /// Field numbers of the request we send most; `Exporters` is 13 (key 0x6a), not renumbered.
    #[test]
    fn solve_request_keeps_upstream_field_numbers() {
        use super::moby::buildkit::v1::{Exporter, SolveRequest};
        let req = SolveRequest {
            r#ref: "r".into(),
            exporter_deprecated: "image".into(),
            session: "s".into(),
            frontend: "f".into(),
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: Default::default(),
            }],
            ..SolveRequest::default()
        };
        assert_eq!(
            hex(&req.encode_to_vec()),
            "0a 01 72 1a 05 69 6d 61 67 65 2a 01 73 32 01 66 6a 07 0a 05 69 6d 61 67 65"
        );
    }

    #[test]
    fn descriptor_set_lists_exactly_the_served_methods() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("/{}.{}/{}", file.package(), service.name(), method.name())
                    })
                })
            })
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "/containerd.services.content.v1.Content/Info",
                "/containerd.services.content.v1.Content/Read",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/moby.buildkit.secrets.v1.Secrets/GetSecret",
                "/moby.filesync.v1.Auth/Credentials",
                "/moby.filesync.v1.Auth/FetchToken",
                "/moby.filesync.v1.Auth/GetTokenAuthority",
                "/moby.filesync.v1.Auth/VerifyTokenAuthority",
                "/moby.filesync.v1.FileSend/DiffCopy",
                "/moby.filesync.v1.FileSync/DiffCopy",
                "/moby.filesync.v1.FileSync/TarStream",
                "/moby.sshforward.v1.SSH/CheckAgent",
                "/moby.sshforward.v1.SSH/ForwardAgent",
            ]
        );
    }
}
