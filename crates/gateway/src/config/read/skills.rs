//! The `skills` section: where skills live, their lookup URLs, model classification.

use super::super::reader::{self, Object, Reader, ms};
use super::super::schema::{ClassifyConfig, SkillsConfig};
use super::super::validation::check_endpoint;
use std::path::{Path, PathBuf};

/// `skills`: relative folders are resolved against `base_dir`, the config file's folder.
pub(super) fn read(r: &mut Reader, root: &Object, base_dir: &Path) -> SkillsConfig {
    let empty = Object::new();
    let s = r
        .section(
            root,
            "",
            "skills",
            &["dir", "lookupUrls", "reloadIntervalMs", "classify"],
        )
        .unwrap_or(&empty);
    let classify = match r.section(s, "skills", "classify", &["enabled", "timeoutMs"]) {
        Some(c) if r.boolean(c, "skills.classify", "enabled").unwrap_or(false) => {
            Some(ClassifyConfig {
                timeout: ms(
                    r.integer(c, "skills.classify", "timeoutMs", 1, 60_000, "milliseconds"),
                    3_000,
                ),
            })
        }
        _ => None,
    };
    let mut lookup_urls = std::collections::BTreeMap::new();
    if let Some(urls) = r.object(s, "skills", "lookupUrls") {
        for (skill, url) in urls {
            let path = format!("skills.lookupUrls.{skill}");
            match url.as_str() {
                Some(url) => {
                    check_endpoint(r, url, &path);
                    lookup_urls.insert(skill.clone(), url.to_string());
                }
                None => r.error(
                    path,
                    format!(
                        "expected a URL string with {{placeholders}}, found {}",
                        reader::describe(url)
                    ),
                ),
            }
        }
    }
    let dir = PathBuf::from(
        r.string(s, "skills", "dir")
            .unwrap_or_else(|| "skills".into()),
    );
    SkillsConfig {
        dir: if dir.is_absolute() {
            dir
        } else {
            base_dir.join(dir)
        },
        lookup_urls,
        classify,
        reload_interval: ms(
            r.integer(
                s,
                "skills",
                "reloadIntervalMs",
                100,
                3_600_000,
                "milliseconds",
            ),
            1_000,
        ),
    }
}
