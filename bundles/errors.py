"""One exception per failed bundle check.

The classes mirror the numbered verification order of docs/formats/bundle.md; each carries
the stable ``code`` printed by ``--json`` and named in that document. Messages start with the
check's code and name the member or part concerned, so an operator knows what to carry again.
"""

from __future__ import annotations

from pai.errors import PaiError


class BundleError(PaiError):
    """A bundle (or one of its parts) is refused. Subclasses name the failed check."""

    code = "bundle"

    def __init__(self, detail: str, *, hint: str | None = None) -> None:
        super().__init__(f"{self.code}: {detail}", hint=hint)
        self.detail = detail


class BundleReadError(BundleError):
    """The bundle file (or a part) cannot be opened or read."""

    code = "bundle-read"


class HeaderError(BundleError):
    """A tar header is malformed (bad checksum, bad number field, not ustar)."""

    code = "header"


class OversizeHeaderError(BundleError):
    """A header announces more bytes than the format allows (manifest, signatures, extensions)."""

    code = "oversize-header"


class TruncatedBundleError(BundleError):
    """The file ends before the archive does."""

    code = "truncated"


class ManifestMissingError(BundleError):
    """The first member is not ``manifest.json``."""

    code = "manifest-missing"


class MissingSignatureError(BundleError):
    """The second member is not ``signatures.json``, or it holds no signature."""

    code = "signature-missing"


class SignaturesDocError(BundleError):
    """The signatures document is malformed or belongs to another manifest."""

    code = "signatures-document"


class RevocationListError(BundleError):
    """A revocation list carried in the bundle claims a trusted root but does not verify."""

    code = "revocations"


class UntrustedSignerError(BundleError):
    """A signing certificate was not issued by a trusted root, or is malformed."""

    code = "untrusted-signer"


class RevokedSignerError(BundleError):
    """The signing key was revoked by its root."""

    code = "revoked-signer"


class SignerCertificateError(BundleError):
    """The signing certificate is not valid at the verification time."""

    code = "certificate-validity"


class BundleSignatureError(BundleError):
    """A signature does not verify over the manifest bytes."""

    code = "signature"


class UnsupportedFormatError(BundleError):
    """The manifest names a format or format version this pai does not implement."""

    code = "unsupported-format"


class ManifestError(BundleError):
    """The (signed) manifest is malformed: bad fields, unsafe or unsorted paths."""

    code = "manifest"


class SignatureThresholdError(BundleError):
    """Fewer distinct trusted signers than the signature policy requires."""

    code = "threshold"


class BundleExpiredError(BundleError):
    """The bundle's ``expires`` time has passed."""

    code = "expired"


class DowngradeError(BundleError):
    """The bundle is older than the highest version already accepted under its name."""

    code = "downgrade"


class UnsafePathError(BundleError):
    """A member path is absolute, contains ``..`` or is otherwise not a plain relative path."""

    code = "unsafe-path"


class UnsafeMemberTypeError(BundleError):
    """A member is a symlink, hardlink, device, FIFO or directory: only regular files allowed."""

    code = "unsafe-member-type"


class DuplicateMemberError(BundleError):
    """A member path occurs twice."""

    code = "duplicate-member"


class UnexpectedMemberError(BundleError):
    """A member is not listed in the manifest, or data follows the end of the archive."""

    code = "unexpected-member"


class MemberOrderError(BundleError):
    """A listed member appears out of manifest order."""

    code = "member-order"


class MissingMemberError(BundleError):
    """The archive ends before every listed member was seen."""

    code = "missing-member"


class MemberHeaderError(BundleError):
    """A member's header differs from the canonical header its manifest entry implies."""

    code = "member-header"


class MemberSizeError(BundleError):
    """A member's size differs from the manifest."""

    code = "member-size"


class MemberHashError(BundleError):
    """A member's sha256 differs from the manifest."""

    code = "member-hash"


class TrailerError(BundleError):
    """The end-of-archive marker or the zero padding is not exactly as the format requires."""

    code = "trailer"


class PartsIndexError(BundleError):
    """The parts index of a split bundle is missing, malformed, or badly signed."""

    code = "parts-index"


class PartMissingError(BundleError):
    """A part named by the parts index was not given or does not exist."""

    code = "part-missing"


class PartCorruptError(BundleError):
    """A part's size or sha256 differs from the signed parts index: carry that part again."""

    code = "part-corrupt"
