//! `buildopt gc`: which content tags of a repository go, and which stay and why.
//!
//! Every build leaves a content tag (`bo-<input digest>`) behind. The newest N per repository stay (newest by the
//! image's creation time on a plain registry, by push time on ECR, which tells it), and so does every content tag
//! whose image anything else still needs: an image another tag points to (a requested tag, the cache tag, anyone's
//! tag) is never removed, and neither is an image a kept content tag points to. That rule is what makes deleting
//! safe on a plain registry, whose API deletes a manifest by digest, and with it every tag on it.
//!
//! [`decide`] is pure; [`scan`] reads a plain registry. ECR is read and cleaned through its own API
//! ([`super::ecr::AwsEcr::images`], `delete_tags`), because ECR removes a tag, not an image, and knows push times.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use super::{CONTENT_TAG_PREFIX, RegistryClient, RegistryError};

/// Requests to the registry at once while scanning a repository.
const FAN_OUT: usize = 8;
/// The largest image config read for its creation time.
const CONFIG_LIMIT: usize = 1 << 20;
/// The annotation BuildKit puts on the attestation manifests of an index.
const REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// A tag and the image (manifest or index digest) it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tagged {
    /// The tag.
    pub(crate) tag: String,
    /// `sha256:...`.
    pub(crate) digest: String,
}

/// A content tag, its image, and how old that image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContentTag {
    /// `bo-...`.
    pub(crate) tag: String,
    /// `sha256:...`.
    pub(crate) digest: String,
    /// When the image was made (creation time, or push time on ECR); None when unknown.
    pub(crate) time: Option<SystemTime>,
}

/// Whether `tag` is a content tag: `bo-` and 64 lowercase hex digits.
pub(crate) fn is_content_tag(tag: &str) -> bool {
    tag.strip_prefix(CONTENT_TAG_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// What `gc` keeps: the newest `keep` content tags, and with `older_than` everything younger too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Content tags kept per repository, newest first.
    pub(crate) keep: usize,
    /// Only images older than this may go.
    pub(crate) older_than: Option<Duration>,
    /// Now.
    pub(crate) now: SystemTime,
}

/// Why a content tag stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kept {
    /// One of the newest `of` (this is number `rank`, from 1).
    Newest {
        /// Its place, newest first.
        rank: usize,
        /// How many are kept.
        of: usize,
    },
    /// Other tags point at its image (requested tags, the cache tag, anyone's).
    Tagged(Vec<String>),
    /// A kept content tag points at the same image.
    SameImage(String),
    /// Younger than `--older-than`.
    Young {
        /// Its age.
        age: Duration,
    },
    /// Its age is unknown, and `--older-than` asks for it.
    AgeUnknown,
}

/// Remove or keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The content tag goes (on a plain registry: its image, by digest).
    Remove,
    /// It stays, and why.
    Keep(Kept),
}

/// Decides for each content tag of one repository, given every other tag of it. Returns them newest first (unknown
/// times last, ties by tag).
pub(crate) fn decide(
    mut content: Vec<ContentTag>,
    others: &[Tagged],
    rules: &Rules,
) -> Vec<(ContentTag, Verdict)> {
    content.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.tag.cmp(&b.tag)));
    let mut tagged: HashMap<&str, Vec<String>> = HashMap::new();
    for o in others {
        tagged
            .entry(o.digest.as_str())
            .or_default()
            .push(o.tag.clone());
    }
    let kept_count = rules.keep.min(content.len());
    let mut verdicts: Vec<(ContentTag, Verdict)> = content
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let verdict = if i < kept_count {
                Verdict::Keep(Kept::Newest {
                    rank: i + 1,
                    of: rules.keep,
                })
            } else if let Some(tags) = tagged.get(c.digest.as_str()) {
                let mut tags = tags.clone();
                tags.sort();
                Verdict::Keep(Kept::Tagged(tags))
            } else {
                match (rules.older_than, c.time) {
                    (None, _) => Verdict::Remove,
                    (Some(_), None) => Verdict::Keep(Kept::AgeUnknown),
                    (Some(limit), Some(t)) => {
                        let age = rules.now.duration_since(t).unwrap_or_default();
                        if age < limit {
                            Verdict::Keep(Kept::Young { age })
                        } else {
                            Verdict::Remove
                        }
                    }
                }
            };
            (c, verdict)
        })
        .collect();
    // An image stays whole: a content tag on the image of a kept one stays too (deleting by digest would take the
    // kept tag with it).
    let mut kept_images: BTreeMap<String, String> = BTreeMap::new();
    for (c, v) in &verdicts {
        if matches!(v, Verdict::Keep(_)) {
            kept_images
                .entry(c.digest.clone())
                .or_insert_with(|| c.tag.clone());
        }
    }
    for (c, v) in &mut verdicts {
        if *v == Verdict::Remove
            && let Some(other) = kept_images.get(&c.digest)
        {
            *v = Verdict::Keep(Kept::SameImage(other.clone()));
        }
    }
    verdicts
}

/// What a plain registry holds for one repository.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scan {
    /// The content tags, with their images' creation times.
    pub(crate) content: Vec<ContentTag>,
    /// Every other tag.
    pub(crate) others: Vec<Tagged>,
}

/// Reads every tag of `repo` and what it points at, and the creation time of each content-tagged image (from its
/// config's `created`; for an index, its first platform image's).
pub(crate) async fn scan(client: &RegistryClient, repo: &str) -> Result<Scan, RegistryError> {
    let tags = client.tags(repo).await?;
    let (content_tags, others) = resolve(client, repo, tags).await?;
    let mut digests: Vec<&str> = content_tags.iter().map(|t| t.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    let times: HashMap<String, Option<SystemTime>> = futures::stream::iter(digests)
        .map(|d| async move { (d.to_owned(), created(client, repo, d).await) })
        .buffer_unordered(FAN_OUT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(d, t)| t.map(|t| (d, t)))
        .collect::<Result<_, _>>()?;
    let content = content_tags
        .into_iter()
        .map(|t| ContentTag {
            time: times.get(&t.digest).copied().flatten(),
            tag: t.tag,
            digest: t.digest,
        })
        .collect();
    Ok(Scan { content, others })
}

/// Every tag of `repo` that is not a content tag, and what it points at now: read again right before deleting, so
/// that a tag moved since the scan protects its image too.
pub(crate) async fn others(
    client: &RegistryClient,
    repo: &str,
) -> Result<Vec<Tagged>, RegistryError> {
    let tags: Vec<String> = client
        .tags(repo)
        .await?
        .into_iter()
        .filter(|t| !is_content_tag(t))
        .collect();
    Ok(resolve(client, repo, tags).await?.1)
}

/// What each of `tags` points at (a tag gone since the listing is left out), content tags first, the others sorted.
async fn resolve(
    client: &RegistryClient,
    repo: &str,
    tags: Vec<String>,
) -> Result<(Vec<Tagged>, Vec<Tagged>), RegistryError> {
    let resolved: Vec<Result<Option<Tagged>, RegistryError>> = futures::stream::iter(tags)
        .map(|tag| async move {
            let digest = client.lookup(&client.reference(repo, &tag)).await?;
            Ok(digest.map(|digest| Tagged { tag, digest }))
        })
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    let mut content = Vec::new();
    let mut others = Vec::new();
    for r in resolved {
        let Some(t) = r? else { continue };
        if is_content_tag(&t.tag) {
            content.push(t);
        } else {
            others.push(t);
        }
    }
    others.sort_by(|a, b| a.tag.cmp(&b.tag));
    Ok((content, others))
}

/// Deletes the input manifest of a deleted image where a registry without the referrers API keeps it (see
/// [`super::inputs`]): the manifests its referrers tag (`sha256-<hex>`) lists, then the tag's index. They describe
/// an image that is gone. Nothing is deleted when another tag of `others` points at that index. Returns how many
/// manifests went.
pub(crate) async fn drop_referrers(
    client: &RegistryClient,
    repo: &str,
    image: &str,
    others: &[Tagged],
) -> Result<usize, RegistryError> {
    let tag = super::inputs::referrers_tag(image);
    let Some(index) = client.manifest(&client.reference(repo, &tag)).await? else {
        return Ok(0);
    };
    if others
        .iter()
        .any(|o| o.digest == index.digest && o.tag != tag)
    {
        return Ok(0);
    }
    let listed: Vec<String> = serde_json::from_slice::<serde_json::Value>(&index.bytes)
        .ok()
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["digest"].as_str().map(str::to_owned))
        .collect();
    let mut deleted = 0;
    for digest in listed.iter().chain(std::iter::once(&index.digest)) {
        if client.delete_manifest(repo, digest).await? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// The creation time of image `digest`: its config's `created`, or for an index its first platform image's. None
/// when the image has none, or its manifest or config is gone or unreadable (the age is then unknown, not an error).
async fn created(
    client: &RegistryClient,
    repo: &str,
    digest: &str,
) -> Result<Option<SystemTime>, RegistryError> {
    let Some(manifest) = client.manifest(&client.by_digest(repo, digest)).await? else {
        return Ok(None);
    };
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(&manifest.bytes) else {
        return Ok(None);
    };
    if let Some(children) = json["manifests"].as_array() {
        let Some(child) = children.iter().find(|m| {
            m["annotations"][REFERENCE_TYPE].is_null() && m["platform"]["os"] != "unknown"
        }) else {
            return Ok(None);
        };
        let Some(child_digest) = child["digest"].as_str() else {
            return Ok(None);
        };
        let Some(m) = client
            .manifest(&client.by_digest(repo, child_digest))
            .await?
        else {
            return Ok(None);
        };
        match serde_json::from_slice(&m.bytes) {
            Ok(v) => json = v,
            Err(_) => return Ok(None),
        }
    }
    let Some(config) = json["config"]["digest"].as_str() else {
        return Ok(None);
    };
    let Some(bytes) = client.blob(repo, config, CONFIG_LIMIT).await? else {
        return Ok(None);
    };
    let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(config["created"].as_str().and_then(parse_time))
}

/// An RFC 3339 time (`2026-12-02T06:39:11.123456789Z`, `...+02:00`), to the nanosecond: builds in the same second
/// are still ordered.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(n: u8) -> String {
        format!("bo-{}", format!("{n:x}").repeat(64).get(..64).unwrap())
    }

    fn at(secs: u64) -> SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn content(n: u8, digest: &str, secs: Option<u64>) -> ContentTag {
        ContentTag {
            tag: tag(n),
            digest: digest.into(),
            time: secs.map(at),
        }
    }

    fn other(t: &str, digest: &str) -> Tagged {
        Tagged {
            tag: t.into(),
            digest: digest.into(),
        }
    }

    fn rules(keep: usize, older_than: Option<u64>) -> Rules {
        Rules {
            keep,
            older_than: older_than.map(Duration::from_secs),
            now: at(10_000),
        }
    }

    fn verdicts(v: &[(ContentTag, Verdict)]) -> Vec<(String, Verdict)> {
        v.iter()
            .map(|(c, v)| (c.digest.clone(), v.clone()))
            .collect()
    }

    #[test]
    fn content_tags_are_recognized() {
        assert!(is_content_tag(&tag(1)));
        assert!(!is_content_tag("bo-123"));
        assert!(!is_content_tag("latest"));
        assert!(!is_content_tag(&tag(1).to_uppercase()));
    }

    #[test]
    fn the_newest_stay_and_tagged_images_are_never_removed() {
        let got = decide(
            vec![
                content(1, "d1", Some(100)),
                content(2, "d2", Some(200)),
                content(3, "d3", Some(300)),
                content(4, "d4", Some(400)),
                content(5, "d5", None),
            ],
            &[
                other("latest", "d1"),
                other("cache", "dc"),
                other("v1", "d1"),
            ],
            &rules(2, None),
        );
        assert_eq!(
            verdicts(&got),
            vec![
                ("d4".into(), Verdict::Keep(Kept::Newest { rank: 1, of: 2 })),
                ("d3".into(), Verdict::Keep(Kept::Newest { rank: 2, of: 2 })),
                ("d2".into(), Verdict::Remove),
                (
                    "d1".into(),
                    Verdict::Keep(Kept::Tagged(vec!["latest".into(), "v1".into()]))
                ),
                // Unknown times sort last: the first to go.
                ("d5".into(), Verdict::Remove),
            ]
        );
    }

    #[test]
    fn an_image_stays_whole() {
        // Two content tags on one image (the same image built for two input digests): the older one stays with
        // the newer, kept one, since deleting it by digest would take both.
        let got = decide(
            vec![
                content(1, "same", Some(100)),
                content(2, "same", Some(100)),
                content(3, "d3", Some(50)),
            ],
            &[],
            &rules(1, None),
        );
        assert_eq!(got[0].1, Verdict::Keep(Kept::Newest { rank: 1, of: 1 }));
        assert_eq!(got[1].1, Verdict::Keep(Kept::SameImage(tag(1))));
        assert_eq!(got[2].1, Verdict::Remove);
    }

    #[test]
    fn older_than_keeps_the_young_and_the_ageless() {
        let got = decide(
            vec![
                content(1, "d1", Some(9_000)),
                content(2, "d2", Some(1_000)),
                content(3, "d3", None),
                content(4, "d4", Some(9_999)),
            ],
            &[],
            &rules(1, Some(3_600)),
        );
        assert_eq!(
            verdicts(&got),
            vec![
                ("d4".into(), Verdict::Keep(Kept::Newest { rank: 1, of: 1 })),
                (
                    "d1".into(),
                    Verdict::Keep(Kept::Young {
                        age: Duration::from_secs(1_000)
                    })
                ),
                ("d2".into(), Verdict::Remove),
                ("d3".into(), Verdict::Keep(Kept::AgeUnknown)),
            ]
        );
        // keep 0: only tagged images and the young stay.
        let got = decide(vec![content(1, "d1", Some(1))], &[], &rules(0, None));
        assert_eq!(got[0].1, Verdict::Remove);
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_time("1970-01-01T00:00:10Z"), Some(at(10)));
        assert_eq!(
            parse_time("2026-12-02T06:39:11.123456789Z"),
            Some(at(1_796_193_551) + Duration::from_nanos(123_456_789))
        );
        assert_eq!(parse_time("1970-01-01T01:00:10+01:00"), Some(at(10)));
        assert!(parse_time("1970-01-01T00:00:10.5Z") > parse_time("1970-01-01T00:00:10.4Z"));
        assert_eq!(parse_time("yesterday"), None);
    }
}
