//! `buildopt gc`: removes old content tags, repository by repository, and prints each content tag with what happened
//! to it and why (see [`crate::registry::gc`] for the rules).
//!
//! On a plain registry an image goes by digest (DELETE of its manifest, which takes every tag on it, so only images
//! whose every tag is a content tag that goes); every non-content tag is read again right before deleting. On ECR
//! content tags go by tag (BatchDeleteImage), and ECR deletes an image with its last tag.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use super::{
    Context as _, Error, ExitStatus, RegistrySetup, aws_ecr, block_on, duration_flag, named,
    need_registry, registry_setup,
};
use crate::cli::args::GcArgs;
use crate::config::{Service, Workspace};
use crate::plan::short_image;
use crate::printer::Printer;
use crate::registry::ecr::{AwsEcr, EcrError};
use crate::registry::gc::{self, ContentTag, Kept, Rules, Tagged, Verdict, decide, is_content_tag};
use crate::registry::{RegistryClient, RegistryError};

/// A repository and the services of the workspace that push to it (for naming the tags that keep its images).
struct Repository<'a> {
    name: &'a str,
    services: Vec<&'a Service>,
}

/// One `gc` run: its rules, and what it removed and kept so far.
struct Gc {
    rules: Rules,
    dry_run: bool,
    printer: Printer,
    removed: usize,
    kept: usize,
    repositories: usize,
    failed: usize,
}

pub(super) fn run(ws: &Workspace, args: &GcArgs, printer: Printer) -> Result<ExitStatus, Error> {
    let registry = need_registry(ws, "gc")?;
    let older_than = args
        .older_than
        .as_deref()
        .map(|v| duration_flag("--older-than", v))
        .transpose()?;
    let mut repos: Vec<Repository<'_>> = Vec::new();
    for svc in named(ws, &args.services)? {
        if repos.iter().any(|r| r.name == svc.image) {
            continue;
        }
        repos.push(Repository {
            name: &svc.image,
            services: ws
                .services
                .iter()
                .filter(|s| s.image == svc.image)
                .collect(),
        });
    }
    let mut gc = Gc {
        rules: Rules {
            keep: args.keep,
            older_than,
            now: SystemTime::now(),
        },
        dry_run: args.dry_run,
        printer,
        removed: 0,
        kept: 0,
        repositories: 0,
        failed: 0,
    };
    block_on(async {
        if registry.is_ecr() {
            let aws = aws_ecr(registry, args.ecr_endpoint.as_deref()).await;
            for repo in &repos {
                gc.ecr_repository(&aws, repo).await?;
            }
        } else {
            let RegistrySetup { verifier, .. } =
                registry_setup(registry, None, &[], false, printer).await?;
            for repo in &repos {
                gc.plain_repository(verifier.client(), repo).await?;
            }
        }
        gc.totals()
    })
}

impl Gc {
    /// One repository of a plain registry: scan, decide, read the other tags again, decide again, delete by
    /// digest.
    async fn plain_repository(
        &mut self,
        client: &RegistryClient,
        repo: &Repository<'_>,
    ) -> Result<(), Error> {
        let name = client.repository(repo.name);
        let scan = gc::scan(client, repo.name)
            .await
            .with_context(|| format!("reading the tags of {name}"))?;
        let mut verdicts = decide(scan.content.clone(), &scan.others, &self.rules);
        let mut failures: BTreeMap<String, String> = BTreeMap::new();
        if !self.dry_run && verdicts.iter().any(|(_, v)| *v == Verdict::Remove) {
            let others = gc::others(client, repo.name)
                .await
                .with_context(|| format!("reading the tags of {name}"))?;
            verdicts = decide(scan.content, &others, &self.rules);
            let mut digests: Vec<&str> = verdicts
                .iter()
                .filter(|(_, v)| *v == Verdict::Remove)
                .map(|(c, _)| c.digest.as_str())
                .collect();
            digests.sort_unstable();
            digests.dedup();
            for digest in digests {
                match client.delete_manifest(repo.name, digest).await {
                    Ok(_) => {
                        // The image's input manifest goes with it; one left behind is only clutter.
                        if let Err(e) = gc::drop_referrers(client, repo.name, digest, &others).await
                        {
                            writeln!(
                                self.printer.errors(),
                                "warning: removing the input manifest of {name}@{digest} failed: {}",
                                crate::error::one_line(&e)
                            )?;
                        }
                    }
                    // A registry that refuses deletes refuses them all: stop with what to do.
                    Err(e @ RegistryError::DeleteRefused { .. }) => {
                        return Err(e).with_context(|| format!("removing content tags of {name}"));
                    }
                    Err(e) => {
                        failures.insert(digest.to_owned(), crate::error::one_line(&e));
                    }
                }
            }
        }
        let failed: BTreeMap<String, String> = verdicts
            .iter()
            .filter_map(|(c, _)| Some((c.tag.clone(), failures.get(&c.digest)?.clone())))
            .collect();
        self.report(&name, repo, &verdicts, &failed, "created")
    }

    /// One ECR repository: DescribeImages, decide, BatchDeleteImage by tag.
    async fn ecr_repository(&mut self, aws: &AwsEcr, repo: &Repository<'_>) -> Result<(), Error> {
        let images = match aws.images(repo.name).await {
            Ok(images) => images,
            Err(EcrError::MissingRepository(_)) => {
                writeln!(
                    self.printer.stderr(),
                    "{}: no such ECR repository, nothing to remove",
                    repo.name
                )?;
                return Ok(());
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("listing the images of ECR repository `{}`", repo.name)
                });
            }
        };
        let mut content = Vec::new();
        let mut others = Vec::new();
        for image in images {
            for tag in image.tags {
                if is_content_tag(&tag) {
                    content.push(ContentTag {
                        tag,
                        digest: image.digest.clone(),
                        time: image.pushed_at,
                    });
                } else {
                    others.push(Tagged {
                        tag,
                        digest: image.digest.clone(),
                    });
                }
            }
        }
        let verdicts = decide(content, &others, &self.rules);
        let remove: Vec<String> = verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Remove)
            .map(|(c, _)| c.tag.clone())
            .collect();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        if !self.dry_run && !remove.is_empty() {
            failed = aws
                .delete_tags(repo.name, &remove)
                .await
                .with_context(|| {
                    format!("removing content tags of ECR repository `{}`", repo.name)
                })?
                .into_iter()
                .collect();
        }
        self.report(repo.name, repo, &verdicts, &failed, "pushed")
    }

    /// Prints one repository's content tags: a header, then a line per tag, newest first (`time_word` says what
    /// the time is: `created`, `pushed`). Failures also go to stderr.
    fn report(
        &mut self,
        name: &str,
        repo: &Repository<'_>,
        verdicts: &[(ContentTag, Verdict)],
        failed: &BTreeMap<String, String>,
        time_word: &str,
    ) -> Result<(), Error> {
        self.repositories += 1;
        let mut out = self.printer.stdout();
        writeln!(
            out,
            "{name}: {} content tag{}",
            verdicts.len(),
            if verdicts.len() == 1 { "" } else { "s" }
        )?;
        let now = SystemTime::now();
        for (c, v) in verdicts {
            let (verb, why) = match v {
                Verdict::Remove => match failed.get(&c.tag) {
                    Some(error) => {
                        self.failed += 1;
                        writeln!(
                            self.printer.errors(),
                            "error: removing {name}:{} failed: {error}",
                            c.tag
                        )?;
                        ("not removed", error.clone())
                    }
                    None => {
                        self.removed += 1;
                        let when = match c.time {
                            Some(t) => format!("{time_word} {}", super::daemon::ago(now, Some(t))),
                            None => format!("{time_word} at an unknown time"),
                        };
                        let verb = if self.dry_run {
                            "would remove"
                        } else {
                            "removed"
                        };
                        (verb, when)
                    }
                },
                Verdict::Keep(kept) => {
                    self.kept += 1;
                    ("kept", kept_reason(kept, repo))
                }
            };
            writeln!(
                out,
                "  {verb:12}  {}  {}  {why}",
                short_tag(&c.tag),
                short_image(&c.digest)
            )?;
        }
        Ok(())
    }

    /// The last line, and the exit status.
    fn totals(&self) -> Result<ExitStatus, Error> {
        let tags = |n: usize| format!("{n} content tag{}", if n == 1 { "" } else { "s" });
        writeln!(
            self.printer.stdout(),
            "{} {} in {} {}; kept {}{}",
            if self.dry_run {
                "would remove"
            } else {
                "removed"
            },
            tags(self.removed),
            self.repositories,
            if self.repositories == 1 {
                "repository"
            } else {
                "repositories"
            },
            self.kept,
            if self.failed > 0 {
                format!("; {} could not be removed", self.failed)
            } else {
                String::new()
            }
        )?;
        Ok(if self.failed > 0 {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        })
    }
}

/// `bo-` and the first 12 hex digits.
fn short_tag(tag: &str) -> &str {
    tag.get(..3 + 12).unwrap_or(tag)
}

/// Why a content tag stays, in words.
fn kept_reason(why: &Kept, repo: &Repository<'_>) -> String {
    match why {
        Kept::Newest { rank, of } => format!("one of the newest {of} ({rank})"),
        Kept::Tagged(tags) => {
            let named: Vec<String> = tags
                .iter()
                .map(|t| {
                    let requested = repo.services.iter().any(|s| s.tags.contains(t));
                    let cache = repo
                        .services
                        .iter()
                        .any(|s| s.cache_tag == *t || s.cache_from.contains(t));
                    match (requested, cache) {
                        (true, _) => format!("{t} (a requested tag)"),
                        (false, true) => format!("{t} (a cache tag)"),
                        (false, false) => t.clone(),
                    }
                })
                .collect();
            format!("its image is tagged {}", named.join(", "))
        }
        Kept::SameImage(other) => format!("its image is that of kept {}", short_tag(other)),
        Kept::Young { age } => {
            let now = SystemTime::now();
            format!(
                "made {}: younger than --older-than",
                super::daemon::ago(now, now.checked_sub(*age))
            )
        }
        Kept::AgeUnknown => "its age is unknown (--older-than keeps it)".to_owned(),
    }
}
