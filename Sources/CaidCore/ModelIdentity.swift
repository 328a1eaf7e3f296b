/// The verified model's digest, handed from the fetch (which checked every object against the manifest) to the
/// measurement (which must not extend RTMR3 before that). Published once per run.
public actor ModelIdentity {
    private var published: String??
    private var waiters: [CheckedContinuation<String?, Never>] = []

    public init() {}

    /// The digest of the verified model, or nil for a bucket without a manifest.
    public func publish(_ digest: String?) {
        guard published == nil else { return }
        published = .some(digest)
        for waiter in waiters { waiter.resume(returning: digest) }
        waiters = []
    }

    /// Waits until the fetch has verified the model.
    public func verified() async -> String? {
        if let published { return published }
        return await withCheckedContinuation { waiters.append($0) }
    }
}
