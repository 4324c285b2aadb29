package account

import (
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"regexp"
	"relay365/internal/message"
	"relay365/internal/queue"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults applied by Normalize.
const (
	DefaultAuthority = "https://login.microsoftonline.com"
	DefaultSMTPAddr  = "smtp.office365.com:587"
	DefaultPerMinute = 30
	DefaultPerDay    = 10000
	DefaultMaxConns  = 3

	ScopeSMTPSend      = "https://outlook.office.com/SMTP.Send"
	ScopeOfflineAccess = "offline_access"
	ScopeAppOnly       = "https://outlook.office365.com/.default"
)

// DefaultDelegatedScopes are the scopes a delegated (user) account asks for.
func DefaultDelegatedScopes() []string { return []string{ScopeSMTPSend, ScopeOfflineAccess} }

// DefaultAppOnlyScopes are the scopes an app-only (client credentials) account asks for.
func DefaultAppOnlyScopes() []string { return []string{ScopeAppOnly} }

// Account is one sending identity: a mailbox that consented (delegated) or
// that an app sends as (app-only). It holds no secrets.
type Account struct {
	// Alias is the registry key and the subject token in mail.send.<alias>.
	Alias string `json:"alias"`
	// Mailbox is the consented mailbox address (user= in XOAUTH2).
	Mailbox string `json:"mailbox"`
	// Tenant is the Entra tenant ID or domain.
	Tenant string `json:"tenant"`
	// TenantID is the directory (tenant) ID, a GUID, that the token
	// endpoint named at sign-in (the tid claim of the ID token or of a
	// JWT access token): the tenant itself, whichever name Tenant gives
	// it (its GUID, one of its domains, organizations). Tenant-wide
	// pauses are keyed by it (TenantKey). Empty when no token named it
	// (an account connected by an earlier version, a token endpoint
	// without ID tokens): Tenant, as configured, is the key then.
	TenantID string `json:"tenant_id,omitempty"`
	// Authority is the identity platform base URL; default DefaultAuthority.
	Authority string `json:"authority,omitempty"`
	// AuthURL, TokenURL and DeviceURL override the endpoints derived from
	// Authority and Tenant (sovereign clouds, tests, the sandbox).
	AuthURL   string `json:"auth_url,omitempty"`
	TokenURL  string `json:"token_url,omitempty"`
	DeviceURL string `json:"device_url,omitempty"`
	// ClientID is the app registration's application (client) ID.
	ClientID string `json:"client_id"`
	// AppOnly selects the client credentials flow (SMTP.SendAsApp).
	AppOnly bool `json:"app_only,omitempty"`
	// Scopes requested; defaults depend on AppOnly.
	Scopes []string `json:"scopes"`
	// SMTPAddr is host:port of the submission endpoint.
	SMTPAddr string `json:"smtp_addr"`
	// CAFile is an extra PEM CA bundle for the SMTP server (sandbox, proxies).
	CAFile string `json:"ca_file,omitempty"`
	// FromPolicy: rewrite (default), allow or reject.
	FromPolicy message.FromPolicy `json:"from_policy,omitempty"`
	// SendAs lists the From addresses allowed under message.PolicyAllow.
	SendAs []string `json:"send_as,omitempty"`
	// PerMinute is the message pace for this mailbox (Office 365: 30).
	PerMinute int `json:"per_minute,omitempty"`
	// PerDay is the recipient budget per rolling 24 hours (Office 365: 10000).
	PerDay int `json:"per_day,omitempty"`
	// MaxConns is the concurrent SMTP sessions for this mailbox (Office 365: 3).
	MaxConns int `json:"max_conns,omitempty"`
	// MaxMessageBytes is the largest message this mailbox may send, in
	// octets as sent (after base64 and the headers the relay adds):
	// Office 365's 35 MB (message.MaxSize) unless the tenant set the
	// mailbox's MaxSendSize lower. Producers learn it before queuing.
	MaxMessageBytes int64 `json:"max_message_bytes,omitempty"`
	// ProxyURL is an HTTP(S) or SOCKS5 proxy for identity platform calls of
	// this account; it overrides HTTPS_PROXY. Consent seals the URL as
	// given (credentials included) with the tokens, which is what the
	// token service uses, and stores only its credential-free form
	// (RedactProxy) here, for display: Registry.Put refuses credentials.
	ProxyURL string `json:"proxy_url,omitempty"`
	// CreatedAt is set by Normalize when zero.
	CreatedAt time.Time `json:"created_at"`
}

var aliasRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidateAlias reports whether alias is usable as a registry key and as a
// NATS subject token.
func ValidateAlias(alias string) error {
	if alias == "" {
		return errors.New("alias is empty: choose a short name such as \"alerts\" (lowercase letters, digits, '-' and '_')")
	}
	if !aliasRE.MatchString(alias) {
		return fmt.Errorf("alias %q is invalid: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit (it becomes the subject mail.send.<alias>)", alias)
	}
	return nil
}

// Normalize trims fields and fills defaults. It is idempotent.
func (a *Account) Normalize() {
	a.Alias = strings.TrimSpace(a.Alias)
	a.Mailbox = strings.TrimSpace(a.Mailbox)
	a.Tenant = strings.TrimSpace(a.Tenant)
	a.TenantID = strings.ToLower(strings.TrimSpace(a.TenantID))
	a.Authority = strings.TrimRight(strings.TrimSpace(a.Authority), "/")
	if a.Authority == "" {
		a.Authority = DefaultAuthority
	}
	a.AuthURL = strings.TrimSpace(a.AuthURL)
	a.TokenURL = strings.TrimSpace(a.TokenURL)
	a.DeviceURL = strings.TrimSpace(a.DeviceURL)
	a.ClientID = strings.TrimSpace(a.ClientID)
	var scopes []string
	for _, s := range a.Scopes {
		s = strings.TrimSpace(s)
		if s != "" && !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	a.Scopes = scopes
	if len(a.Scopes) == 0 {
		if a.AppOnly {
			a.Scopes = DefaultAppOnlyScopes()
		} else {
			a.Scopes = DefaultDelegatedScopes()
		}
	}
	a.SMTPAddr = strings.TrimSpace(a.SMTPAddr)
	if a.SMTPAddr == "" {
		a.SMTPAddr = DefaultSMTPAddr
	}
	a.CAFile = strings.TrimSpace(a.CAFile)
	a.FromPolicy = message.FromPolicy(strings.ToLower(strings.TrimSpace(string(a.FromPolicy))))
	if a.FromPolicy == "" {
		a.FromPolicy = message.PolicyRewrite
	}
	var sendAs []string
	for _, s := range a.SendAs {
		s = strings.TrimSpace(s)
		if s != "" {
			sendAs = append(sendAs, s)
		}
	}
	a.SendAs = sendAs
	if a.PerMinute == 0 {
		a.PerMinute = DefaultPerMinute
	}
	if a.PerDay == 0 {
		a.PerDay = DefaultPerDay
	}
	if a.MaxConns == 0 {
		a.MaxConns = DefaultMaxConns
	}
	if a.MaxMessageBytes == 0 {
		a.MaxMessageBytes = message.MaxSize
	}
	a.ProxyURL = strings.TrimSpace(a.ProxyURL)
	if a.CreatedAt.IsZero() {
		a.CreatedAt = time.Now().UTC()
	}
}

// Validate checks a (normally already normalised) account. All problems are
// reported together, each naming the field and what to fix.
func (a Account) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if err := ValidateAlias(a.Alias); err != nil {
		errs = append(errs, err)
	}
	if err := validateAddress(a.Mailbox); err != nil {
		add("mailbox: %v: give the bare address of the mailbox that consents, e.g. alerts@contoso.com", err)
	}
	switch {
	case a.Tenant == "":
		add("tenant is empty: give the Entra tenant ID (GUID) or a verified domain such as contoso.onmicrosoft.com")
	case !validTenant(a.Tenant):
		add("tenant %q is invalid: use the tenant ID (GUID), a domain, or organizations/common", a.Tenant)
	case a.AppOnly && (a.Tenant == "common" || a.Tenant == "consumers"):
		add("tenant %q cannot be used with app_only: client credentials need the tenant ID or domain", a.Tenant)
	}
	if a.TenantID != "" && (!IsTenantID(a.TenantID) || a.TenantID != strings.ToLower(a.TenantID)) {
		add("tenant_id %q is invalid: it is the directory (tenant) ID GUID that sign-in learns; leave it unset", a.TenantID)
	}
	if a.Authority != "" {
		if err := validateEndpoint(a.Authority); err != nil {
			add("authority: %v", err)
		}
	}
	for _, ep := range []struct{ name, v string }{{"auth_url", a.AuthURL}, {"token_url", a.TokenURL}, {"device_url", a.DeviceURL}} {
		if ep.v == "" {
			continue
		}
		if err := validateEndpoint(ep.v); err != nil {
			add("%s: %v", ep.name, err)
		}
	}
	switch {
	case a.ClientID == "":
		add("client_id is empty: give the application (client) ID of the app registration in Entra")
	case strings.ContainsAny(a.ClientID, " \t\r\n/"):
		add("client_id %q is invalid: it is the application (client) ID GUID shown in Entra", a.ClientID)
	}
	if len(a.Scopes) == 0 {
		add("scopes are empty: leave them unset for the defaults")
	}
	for _, s := range a.Scopes {
		if strings.ContainsAny(s, " \t\r\n") {
			add("scopes: %q contains whitespace: give one scope per entry", s)
		}
	}
	if a.AppOnly {
		for _, s := range a.Scopes {
			if !strings.HasSuffix(s, "/.default") {
				add("scopes: app_only accounts can only ask for <resource>/.default scopes (got %q); use %s", s, ScopeAppOnly)
			}
		}
	} else if len(a.Scopes) > 0 && !slices.Contains(a.Scopes, ScopeOfflineAccess) {
		add("scopes: delegated accounts need %q, otherwise no refresh token is issued and the account stops after one hour", ScopeOfflineAccess)
	}
	if err := validateHostPort(a.SMTPAddr); err != nil {
		add("smtp_addr: %v: use host:port such as %s", err, DefaultSMTPAddr)
	}
	switch a.FromPolicy {
	case message.PolicyRewrite, message.PolicyReject, "":
	case message.PolicyAllow:
		if len(a.SendAs) == 0 {
			add("send_as is empty but from_policy is allow: list the From addresses the mailbox may send as, or use from_policy rewrite")
		}
	default:
		add("from_policy %q is invalid: use rewrite, allow or reject", a.FromPolicy)
	}
	for _, s := range a.SendAs {
		if err := validateAddress(s); err != nil {
			add("send_as: %v", err)
		}
	}
	if a.PerMinute < 0 {
		add("per_minute is %d: must be positive (Office 365 allows 30 messages a minute per mailbox)", a.PerMinute)
	}
	if a.PerDay < 0 {
		add("per_day is %d: must be positive (Office 365 allows 10000 recipients a day per mailbox)", a.PerDay)
	}
	if a.MaxConns < 0 {
		add("max_conns is %d: must be positive (Office 365 allows 3 connections per mailbox)", a.MaxConns)
	}
	if a.MaxMessageBytes < 0 || a.MaxMessageBytes > message.MaxSize {
		add("max_message_bytes is %d: must be between 1 and %d (Office 365 accepts at most 35 MB over SMTP submission)", a.MaxMessageBytes, int64(message.MaxSize))
	}
	if a.ProxyURL != "" {
		if err := validateProxy(a.ProxyURL); err != nil {
			add("proxy_url: %v", err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	name := a.Alias
	if name == "" {
		name = "(no alias)"
	}
	return fmt.Errorf("account %s is invalid: %w", name, errors.Join(errs...))
}

// Endpoints returns the authorize, token and device-code endpoints: the
// explicit overrides where set, otherwise derived from Authority and Tenant.
func (a Account) Endpoints() (authURL, tokenURL, deviceURL string) {
	authority := strings.TrimRight(a.Authority, "/")
	if authority == "" {
		authority = DefaultAuthority
	}
	base := authority + "/" + url.PathEscape(a.Tenant) + "/oauth2/v2.0/"
	authURL, tokenURL, deviceURL = base+"authorize", base+"token", base+"devicecode"
	if a.AuthURL != "" {
		authURL = a.AuthURL
	}
	if a.TokenURL != "" {
		tokenURL = a.TokenURL
	}
	if a.DeviceURL != "" {
		deviceURL = a.DeviceURL
	}
	return authURL, tokenURL, deviceURL
}

func validateAddress(s string) error {
	if s == "" {
		return errors.New("address is empty")
	}
	addr, err := mail.ParseAddress(s)
	if err != nil || addr.Address != s || addr.Name != "" {
		return fmt.Errorf("%q is not a bare e-mail address", s)
	}
	return nil
}

var tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$`)

func validTenant(t string) bool { return tenantRE.MatchString(t) }

// tenantIDRE matches a directory (tenant) ID: a GUID, in either case.
var tenantIDRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// IsTenantID reports whether s is a directory (tenant) ID, a GUID, as
// opposed to one of the tenant's domains or a multi-tenant name.
func IsTenantID(s string) bool { return tenantIDRE.MatchString(s) }

// ConsumerTenantID is the tenant ID Entra names (the tid claim) for every
// personal Microsoft account (outlook.com, hotmail.com, ...): a tenant of
// Microsoft's that unrelated people share, as they share the name
// consumers, not one organisation (Microsoft identity platform ID token
// claims reference, "tid").
const ConsumerTenantID = "9188040d-6c67-4c5b-b112-36a304b66dad"

// TenantKey is what tenant-wide pauses (a tenant blocked, its external
// recipient limit reached: docs/office365.md §4) compare accounts by
// (SameTenant), and
// how it was found: the tenant ID learnt at sign-in (TenantID, byID true),
// which is the same whichever name an account's Tenant gives the tenant;
// else Tenant as configured, lower case, under which a tenant given by its
// GUID on one account and by a domain on another are two tenants. "" for
// an account without a tenant ID whose Tenant is organizations, common or
// consumers, and for a personal Microsoft account (ConsumerTenantID, as
// TenantID or as Tenant): those name no one tenant. A TenantID that is
// no GUID was not learnt at sign-in (a record rewritten by hand: workers
// take records as stored) and counts as none.
func (a Account) TenantKey() (key string, byID bool) {
	id := strings.ToLower(a.TenantID)
	if !IsTenantID(id) {
		id = ""
	}
	if id != "" && id != ConsumerTenantID {
		return id, true
	}
	switch t := strings.ToLower(a.Tenant); {
	case id == ConsumerTenantID, multiTenant(t):
		return "", false
	default:
		return t, false
	}
}

// SameTenant reports whether a tenant-wide pause of a extends to b: both
// know their tenant ID (TenantKey byID) and it is the same; or one does
// not, and the keys are the same (its tenant as configured is the other's
// ID), or their tenants as configured are (the same domain or GUID, lower
// case), as all accounts were matched before the ID was learnt: an account
// connected again after an upgrade still pauses with those connected by an
// earlier version. The names that name no one tenant (TenantKey "")
// match nothing.
func (a Account) SameTenant(b Account) bool {
	ka, ida := a.TenantKey()
	kb, idb := b.TenantKey()
	switch {
	case ka == "" || kb == "":
		return false
	case ida && idb:
		return ka == kb
	case ka == kb:
		return true
	}
	ta, tb := strings.ToLower(a.Tenant), strings.ToLower(b.Tenant)
	return ta == tb && !multiTenant(ta)
}

// multiTenant reports whether t (lower case) names no one tenant: the
// multi-tenant endpoints' names and the personal accounts' tenant.
func multiTenant(t string) bool {
	switch t {
	case "organizations", "common", "consumers", ConsumerTenantID:
		return true
	}
	return false
}

// validateEndpoint accepts https URLs, and http only on loopback hosts (the
// sandbox and tests).
func validateEndpoint(s string) error {
	// authtool prints these errors: a user name and password, or a token,
	// in the URL are not shown (queue.RedactURL reads any scheme).
	shown := queue.RedactURL(s)
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", shown)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q uses http: identity endpoints must use https (http is accepted only on localhost)", shown)
	default:
		return fmt.Errorf("%q: scheme must be https", shown)
	}
}

func validateProxy(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return errors.New("not an absolute URL: use http://host:port, https://host:port or socks5://host:port")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
		return nil
	}
	return fmt.Errorf("scheme %q is not supported: use http, https or socks5", u.Scheme)
}

// RedactProxy is the credential-free form of a proxy URL,
// scheme://host[:port]: no user name, password, path or query. It is what
// relay_accounts, logs and status may show. An empty URL gives "", one
// that does not parse "(invalid proxy URL)".
func RedactProxy(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "(invalid proxy URL)"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
}

// ProxyHasCredentials reports whether a proxy URL carries a user name or
// password (http://user:password@proxy:3128).
func ProxyHasCredentials(s string) bool {
	u, err := url.Parse(s)
	return err == nil && u.User != nil
}

func validateHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q has an invalid port", s)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// SizeLimit is the largest message the account may send, in octets as
// sent: MaxMessageBytes, or Office 365's 35 MB for an account stored
// before the field existed.
func (a Account) SizeLimit() int64 {
	if a.MaxMessageBytes > 0 {
		return a.MaxMessageBytes
	}
	return message.MaxSize
}
