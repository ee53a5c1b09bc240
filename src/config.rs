//! Helpers both binaries use to read their TOML configuration.

/// Parses TOML into `T`, turning an error into one line that names the offending line and key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().trim().to_string();
        match error.span() {
            Some(span) => {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                format!("line {line_no} `{line}`: {message}")
            }
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        size: u64,
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let error = parse_toml::<Sample>("\nsize = \"big\"\n").unwrap_err();
        assert!(error.starts_with("line 2 `size = \"big\"`"), "{error}");
        let error = parse_toml::<Sample>("size = 1\ncolour = 2\n").unwrap_err();
        assert!(error.contains("colour"), "{error}");
        assert!(!error.contains('\n'));
    }
}
