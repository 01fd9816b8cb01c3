//! The rich details of a failed call (`grpc-status-details-bin`: a `google.rpc.Status` whose `details` BuildKit
//! fills from its `errdefs` package). Only the source location is read: which lines of which file (the Dockerfile)
//! the failing instruction came from. Both BuildKit v0.13 (Docker 26) and v0.2x (Docker 28.5) send it as JSON
//! (`errdefs.Source+json`).

use prost::Message as _;
use serde::Deserialize;

use crate::proto::google::rpc::Status;

/// Where in a build's source file a failure is, lines counted from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file as the frontend named it (for a Dockerfile build: the Dockerfile's file name).
    pub filename: String,
    /// First line.
    pub line: u32,
    /// Last line (the same as `line` for a one-line instruction).
    pub end_line: u32,
}

/// The type URL suffix of BuildKit's source detail.
const SOURCE_JSON: &str = "errdefs.Source+json";

#[derive(Deserialize)]
struct Source {
    #[serde(default)]
    info: Info,
    #[serde(default)]
    ranges: Vec<Range>,
}

#[derive(Deserialize, Default)]
struct Info {
    #[serde(default)]
    filename: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(default)]
    start: Position,
    #[serde(default)]
    end: Position,
}

#[derive(Deserialize, Default)]
struct Position {
    #[serde(default)]
    line: i64,
}

/// The innermost source location in `details` (the bytes of a `grpc-status-details-bin` trailer), if BuildKit sent
/// one. Anything undecodable is no location.
pub(crate) fn source_location(details: &[u8]) -> Option<SourceLocation> {
    if details.is_empty() {
        return None;
    }
    let status = Status::decode(details).ok()?;
    // BuildKit wraps errors outward; the last source detail is the one closest to the failing instruction.
    status
        .details
        .iter()
        .filter(|any| any.type_url.ends_with(SOURCE_JSON))
        .filter_map(|any| serde_json::from_slice::<Source>(&any.value).ok())
        .filter_map(|s| {
            let range = s.ranges.first()?;
            let line = u32::try_from(range.start.line).ok().filter(|l| *l > 0)?;
            let end_line = u32::try_from(range.end.line).unwrap_or(line).max(line);
            Some(SourceLocation {
                filename: s.info.filename,
                line,
                end_line,
            })
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(details: Vec<(&str, &str)>) -> Vec<u8> {
        Status {
            code: 2,
            message: "failed".into(),
            details: details
                .into_iter()
                .map(|(url, value)| prost_types::Any {
                    type_url: url.into(),
                    value: value.as_bytes().to_vec(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_source_range_is_read_from_the_json_detail() {
        let details = status_with(vec![
            (
                "github.com/moby/buildkit/stack.Stack+json",
                "{\"frames\":[]}",
            ),
            (
                "github.com/moby/buildkit/errdefs.Source+json",
                r#"{"info":{"filename":"Dockerfile","data":"RlJPTQ=="},"ranges":[{"start":{"line":3},"end":{"line":4}}]}"#,
            ),
            (
                "github.com/moby/buildkit/errdefs.Vertex+json",
                r#"{"digest":"sha256:00"}"#,
            ),
        ]);
        assert_eq!(
            source_location(&details),
            Some(SourceLocation {
                filename: "Dockerfile".into(),
                line: 3,
                end_line: 4
            })
        );
    }

    #[test]
    fn no_or_broken_details_are_no_location() {
        assert_eq!(source_location(b""), None);
        assert_eq!(source_location(b"\xff\xff"), None);
        let broken = status_with(vec![("github.com/moby/buildkit/errdefs.Source+json", "{")]);
        assert_eq!(source_location(&broken), None);
        let no_line = status_with(vec![(
            "github.com/moby/buildkit/errdefs.Source+json",
            r#"{"info":{"filename":"Dockerfile"},"ranges":[{"start":{},"end":{}}]}"#,
        )]);
        assert_eq!(source_location(&no_line), None);
    }
}
