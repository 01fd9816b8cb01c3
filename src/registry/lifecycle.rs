//! The ECR lifecycle policy buildopt gives a repository (`ecr_lifecycle = { keep_content_tags = N }`): ECR expires
//! images with a content tag beyond the newest N (by push time).
//!
//! ECR expires an *image*, with every tag on it, as soon as one of its tags matches a rule. An image whose content
//! tag is old but that `latest` points to (a promotion back to older inputs, or a branch that has not built for a
//! while) would go with `latest`. So before the content-tag rule come one rule per requested tag and the cache tag,
//! which select the one image carrying that tag and never expire it (`imageCountMoreThan 9999`): ECR never lets a
//! lower-priority rule expire an image that matches a higher-priority rule's tags. Tags that vary per run (a branch
//! or commit in a variable) are protected as the run that wrote the policy named them: `buildopt gc`, which checks
//! every tag, is the tool for repositories where that matters.
//!
//! Every rule's description starts with [`MARK`]: a policy whose rules all do is buildopt's and may be replaced; any
//! other is someone else's and is left alone.

use serde_json::{Value, json};

use super::CONTENT_TAG_PREFIX;

/// The start of the description of every rule buildopt writes.
pub(crate) const MARK: &str = "buildopt:";

/// More images than one tag can ever be on: a rule with this count never expires anything.
const NEVER: u32 = 9999;

/// The policy for a repository whose images carry `protected` tags (requested tags and the cache tag), keeping the
/// newest `keep` content-tagged images. The text is deterministic, so that re-applying it changes nothing.
pub(crate) fn policy(keep: u32, protected: &[String]) -> String {
    let mut tags: Vec<&str> = protected
        .iter()
        .map(String::as_str)
        .filter(|t| !t.starts_with(CONTENT_TAG_PREFIX))
        .collect();
    tags.sort_unstable();
    tags.dedup();
    let mut rules: Vec<Value> = tags
        .iter()
        .enumerate()
        .map(|(i, tag)| {
            json!({
                "rulePriority": i + 1,
                "description": format!("{MARK} never expire the image tagged {tag}"),
                "selection": {
                    "tagStatus": "tagged",
                    "tagPatternList": [tag],
                    "countType": "imageCountMoreThan",
                    "countNumber": NEVER,
                },
                "action": { "type": "expire" },
            })
        })
        .collect();
    rules.push(json!({
        "rulePriority": tags.len() + 1,
        "description": format!("{MARK} keep the newest {keep} images with a content tag ({CONTENT_TAG_PREFIX}...)"),
        "selection": {
            "tagStatus": "tagged",
            "tagPrefixList": [CONTENT_TAG_PREFIX],
            "countType": "imageCountMoreThan",
            "countNumber": keep,
        },
        "action": { "type": "expire" },
    }));
    json!({ "rules": rules }).to_string()
}

/// What a repository's current policy is, next to the one buildopt would write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Current {
    /// No policy.
    None,
    /// buildopt's, and the same as the wanted one.
    UpToDate,
    /// buildopt's, but another (other tags, another count): replaced.
    Outdated,
    /// Someone else's: left alone.
    Foreign,
}

/// Compares the policy text ECR holds (if any) with `wanted`. ECR may reformat the text, so they are compared as
/// JSON.
pub(crate) fn compare(current: Option<&str>, wanted: &str) -> Current {
    let Some(text) = current else {
        return Current::None;
    };
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Current::Foreign;
    };
    let ours = value["rules"].as_array().is_some_and(|rules| {
        !rules.is_empty()
            && rules.iter().all(|r| {
                r["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(MARK))
            })
    });
    if !ours {
        Current::Foreign
    } else if serde_json::from_str::<Value>(wanted).is_ok_and(|w| w == value) {
        Current::UpToDate
    } else {
        Current::Outdated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_and_cache_tags_are_protected_before_the_content_tag_rule() {
        let text = policy(5, &["latest".into(), "cache".into(), "latest".into()]);
        let v: Value = serde_json::from_str(&text).unwrap();
        let rules = v["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0]["selection"]["tagPatternList"], json!(["cache"]));
        assert_eq!(rules[1]["selection"]["tagPatternList"], json!(["latest"]));
        assert_eq!(rules[1]["rulePriority"], 2);
        let last = &rules[2];
        assert_eq!(last["rulePriority"], 3);
        assert_eq!(last["selection"]["tagPrefixList"], json!(["bo-"]));
        assert_eq!(last["selection"]["countNumber"], 5);
        assert!(
            rules
                .iter()
                .all(|r| r["description"].as_str().unwrap().starts_with(MARK))
        );
        // Deterministic: the same inputs give the same text.
        assert_eq!(text, policy(5, &["cache".into(), "latest".into()]));
    }

    #[test]
    fn ours_foreign_and_outdated() {
        let wanted = policy(3, &["latest".into()]);
        assert_eq!(compare(None, &wanted), Current::None);
        assert_eq!(compare(Some(&wanted), &wanted), Current::UpToDate);
        // ECR reformats: still the same policy.
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&wanted).unwrap()).unwrap();
        assert_eq!(compare(Some(&pretty), &wanted), Current::UpToDate);
        assert_eq!(
            compare(Some(&policy(4, &["latest".into()])), &wanted),
            Current::Outdated
        );
        let foreign = r#"{"rules":[{"rulePriority":1,"description":"expire untagged","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}}]}"#;
        assert_eq!(compare(Some(foreign), &wanted), Current::Foreign);
        assert_eq!(compare(Some("not json"), &wanted), Current::Foreign);
        assert_eq!(compare(Some(r#"{"rules":[]}"#), &wanted), Current::Foreign);
    }
}
