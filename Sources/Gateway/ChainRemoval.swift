/// Removing chains of caid's own from one table in a single `iptables-restore --noflush` transaction, worked out from
/// that table's `iptables-save` listing. Pure: the listing in, the restore script out.
///
/// Why: a clean stop used to run one iptables process per jump, per flush and per delete (sixteen for the guard's
/// two families, six for the nat rules); on a slow host each costs a third of a second, and together they pushed
/// `systemctl stop` past its budget. Two processes per table do the same, and the table changes atomically.
///
/// The lines come from the listing verbatim, with `-A` turned into `-D`: `iptables-save` writes each rule in the
/// form `iptables-restore` reads (iptables `iptables/iptables-save.8`, "output ... in an easily parseable format"),
/// so deleting by that exact specification removes exactly that rule, however it was inserted.
public enum ChainRemoval {
    /// The restore script that drops every rule jumping (`-j`) or going (`-g`) to one of `chains`, then flushes and
    /// deletes those chains; `nil` when the listing has none of them and nothing refers to them.
    /// - Parameters:
    ///   - table: the table's name (`filter`, `nat`).
    ///   - chains: caid's chains in that table.
    ///   - listing: what `iptables-save -t <table>` printed.
    public static func script(table: String, chains: [String], listing: String) -> String? {
        let ours = Set(chains)
        var existing: Set<String> = []
        var deletions: [String] = []
        for raw in listing.split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(raw)
            if line.hasPrefix(":") {
                // A chain header: ":NAME POLICY [packets:bytes]".
                let name = line.dropFirst().split(separator: " ", maxSplits: 1).first.map(String.init) ?? ""
                if ours.contains(name) { existing.insert(name) }
                continue
            }
            guard line.hasPrefix("-A ") else { continue }
            let words = unquotedWords(line)
            guard words.count >= 2, !ours.contains(words[1]) else { continue }  // rules inside our chains go with -F
            let targets = zip(words, words.dropFirst()).filter { $0.0 == "-j" || $0.0 == "-g" }.map { $0.1 }
            if targets.contains(where: ours.contains) { deletions.append("-D" + line.dropFirst(2)) }
        }
        guard !existing.isEmpty || !deletions.isEmpty else { return nil }
        let ordered = chains.filter(existing.contains)
        let lines = ["*" + table] + deletions + ordered.map { "-F " + $0 } + ordered.map { "-X " + $0 } + ["COMMIT"]
        return lines.joined(separator: "\n") + "\n"
    }

    /// The line's words without its quoted arguments (a `--comment "..."` may contain anything), so that nothing
    /// inside one is taken for a target.
    private static func unquotedWords(_ line: String) -> [String] {
        var words: [String] = []
        var word = ""
        var quoted = false
        var escaped = false
        for character in line {
            if escaped { escaped = false; continue }
            switch character {
            case "\\" where quoted: escaped = true
            case "\"": quoted.toggle(); word = ""
            case " " where !quoted:
                if !word.isEmpty { words.append(word) }
                word = ""
            default: if !quoted { word.append(character) }
            }
        }
        if !word.isEmpty { words.append(word) }
        return words
    }
}
