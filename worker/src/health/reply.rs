//! The Redis error code in a failed call's message, from a fixed allow-list, so that
//! `/readyz` can say "Redis replied OOM" without repeating the message (which may name
//! a key or, for a connection error, the server).

/// Redis error codes `/readyz` names, each with the spellings the client prints it in
/// (redis-rs prints known codes by their kind's name, others as the code in quotes).
pub const REDIS_CODES: &[(&str, &[&str])] = &[
    ("OOM", &["OOM"]),
    ("READONLY", &["READONLY", "ReadOnly"]),
    ("LOADING", &["LOADING", "BusyLoading"]),
    ("NOPERM", &["NOPERM", "NoPerm"]),
    ("NOAUTH", &["NOAUTH"]),
    ("WRONGPASS", &["WRONGPASS"]),
    ("NOGROUP", &["NOGROUP"]),
    ("MISCONF", &["MISCONF"]),
    ("BUSY", &["BUSY"]),
    ("MASTERDOWN", &["MASTERDOWN", "MasterDown"]),
    ("CLUSTERDOWN", &["CLUSTERDOWN", "ClusterDown"]),
    ("TRYAGAIN", &["TRYAGAIN", "TryAgain"]),
    ("CROSSSLOT", &["CROSSSLOT", "CrossSlot"]),
    ("NOSCRIPT", &["NOSCRIPT", "NoScript"]),
    ("EXECABORT", &["EXECABORT", "ExecAbort"]),
    ("ERR", &["ERR", "ResponseError"]),
];

/// The first word of `message` that spells an allowed Redis error code, as the code.
pub fn redis_code(message: &str) -> Option<&'static str> {
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .find_map(|word| {
            REDIS_CODES
                .iter()
                .find(|(_, spellings)| spellings.contains(&word))
                .map(|(code, _)| *code)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_read_from_the_clients_spellings_and_nothing_else() {
        assert_eq!(
            redis_code("\"OOM\": command not allowed when used memory > 'maxmemory'."),
            Some("OOM")
        );
        assert_eq!(
            redis_code("ReadOnly: You can't write against a read only replica."),
            Some("READONLY")
        );
        assert_eq!(redis_code("BusyLoading: Redis is loading"), Some("LOADING"));
        assert_eq!(redis_code("\"NOGROUP\": No such key"), Some("NOGROUP"));
        assert_eq!(
            redis_code("Connection refused (os error 111) redis://:secret@host"),
            None
        );
        assert_eq!(redis_code("timed out"), None);
    }
}
