//! The customer's language: detected from what they write (among the languages the deployment
//! serves), else the platform's locale, else the default; kept in the session once known.

use whatlang::{Detector, Lang};

/// ISO 639-1 codes the detector knows, with whatlang's languages.
const KNOWN: &[(&str, Lang)] = &[
    ("nl", Lang::Nld),
    ("en", Lang::Eng),
    ("de", Lang::Deu),
    ("fr", Lang::Fra),
    ("es", Lang::Spa),
    ("it", Lang::Ita),
    ("pt", Lang::Por),
    ("pl", Lang::Pol),
    ("tr", Lang::Tur),
    ("ar", Lang::Ara),
];

/// Fewer words than this say too little about a language (a tracking number, "ok", "hi").
const MIN_WORDS: usize = 3;
/// Confidence below which a detection is not trusted.
const MIN_CONFIDENCE: f64 = 0.3;

/// Tells which of the served languages a message is written in.
pub struct LanguageDetector {
    detector: Option<Detector>,
}

impl LanguageDetector {
    /// A detector choosing among `languages` (ISO 639-1 codes; unknown codes are ignored).
    pub fn new(languages: &[String]) -> LanguageDetector {
        let allow: Vec<Lang> = languages
            .iter()
            .filter_map(|code| KNOWN.iter().find(|(c, _)| c == code).map(|(_, l)| *l))
            .collect();
        LanguageDetector {
            // With one language or none there is nothing to choose.
            detector: (allow.len() > 1).then(|| Detector::with_allowlist(allow)),
        }
    }

    /// The ISO 639-1 code of the language `text` is written in, when the text says enough.
    pub fn detect(&self, text: &str) -> Option<String> {
        let words = text
            .split_whitespace()
            .filter(|w| w.chars().any(char::is_alphabetic))
            .count();
        if words < MIN_WORDS {
            return None;
        }
        let info = self.detector.as_ref()?.detect(text)?;
        if info.confidence() < MIN_CONFIDENCE {
            return None;
        }
        KNOWN
            .iter()
            .find(|(_, lang)| *lang == info.lang())
            .map(|(code, _)| (*code).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn velocity() -> LanguageDetector {
        LanguageDetector::new(&["nl".into(), "en".into(), "de".into()])
    }

    #[test]
    fn tells_dutch_english_and_german_apart() {
        let d = velocity();
        assert_eq!(
            d.detect("Waar is mijn pakket? Het had gisteren moeten komen")
                .as_deref(),
            Some("nl")
        );
        assert_eq!(
            d.detect("Where is my parcel? It should have arrived yesterday")
                .as_deref(),
            Some("en")
        );
        assert_eq!(
            d.detect("Wo ist mein Paket? Es hätte gestern kommen sollen")
                .as_deref(),
            Some("de")
        );
    }

    #[test]
    fn says_nothing_about_a_few_characters() {
        let d = velocity();
        assert_eq!(d.detect("VC482913577NL"), None);
        assert_eq!(d.detect("ok"), None);
        assert_eq!(
            LanguageDetector::new(&["en".into()]).detect("Where is my parcel now"),
            None
        );
    }
}
