// A standards OpenID Provider for the third-party integration test
// (deploy/thirdparty_test.go): panva's oidc-provider, a certified OpenID
// Connect implementation this project did not write (the version is
// pinned in package-lock.json; .ci/run installs it with npm ci). This
// file is only its configuration, as an operator would write it. The
// test runs `node oidc-provider.mjs` with:
//
//   OIDC_PORT              port on 127.0.0.1; the issuer is http://127.0.0.1:<port>
//   OIDC_CLIENT_ID         the public client authtool signs in with
//   OIDC_ACCOUNTS          space separated mailbox addresses that may sign in
//   OIDC_ACCESS_TOKEN_TTL  access token lifetime, seconds
//   OIDC_SIGNING_KEY       PEM file (PKCS #8) of its RSA signing key
//   OIDC_SIGNING_KID       that key's id (the kid in the tokens' JWS header)
//
// and waits for its discovery document.
import { createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const port = Number(env('OIDC_PORT'));
const issuer = `http://127.0.0.1:${port}`;
const accounts = new Set(env('OIDC_ACCOUNTS').split(' '));

// The SMTP server is a resource server (RFC 8707) of its own: access
// tokens for it carry the scope "smtp" and are JWTs signed with the
// provider's key (RFC 9068), as Entra's are for Exchange Online, and
// about as long; the SMTP server checks them with the public key.
const smtpResource = 'urn:relay365:smtp';
const signingKey = {
  ...createPrivateKey(readFileSync(env('OIDC_SIGNING_KEY'))).export({ format: 'jwk' }),
  kid: env('OIDC_SIGNING_KID'),
  alg: 'RS256',
  use: 'sig',
};

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  clients: [
    {
      // authtool login: a native public client (RFC 8252) with PKCE and
      // a loopback redirect, whose port the provider ignores (§7.3).
      client_id: env('OIDC_CLIENT_ID'),
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: ['http://127.0.0.1/'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    },
  ],
  scopes: ['openid', 'offline_access', 'profile', 'email', 'smtp'],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email', 'email_verified'],
  },
  // The subject is the mailbox address, which the SMTP server compares
  // with the XOAUTH2 user.
  async findAccount(ctx, id) {
    if (!accounts.has(id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: id, email_verified: true };
      },
    };
  },
  // Put the profile and email claims in the ID token too, as Entra does,
  // so authtool's check of who signed in has a claim to read (the
  // default keeps them for the userinfo endpoint, and authtool then
  // leaves the proof to the test mail).
  conformIdTokenClaims: false,
  // JWT access tokens say typ "JWT" in their header, as Entra's do,
  // rather than RFC 9068's "at+jwt": Dovecot 2.3 validates only "JWT".
  formats: {
    customizers: {
      jwt(ctx, token, jwt) {
        jwt.header = { typ: 'JWT' };
      },
    },
  },
  ttl: {
    AccessToken: Number(env('OIDC_ACCESS_TOKEN_TTL')),
    AuthorizationCode: 60,
    IdToken: 3600,
    Interaction: 600,
    Session: 3600,
    Grant: 14 * 24 * 3600,
    RefreshToken: 14 * 24 * 3600,
  },
  features: {
    devInteractions: { enabled: true }, // its own login and consent pages
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => smtpResource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== smtpResource) throw new Error(`unknown resource ${resource}`);
        return { scope: 'smtp', audience: smtpResource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
});

// One line per grant and per error, for the test's log on failure.
for (const ev of ['grant.success', 'grant.error', 'authorization.error', 'server_error']) {
  provider.on(ev, (ctx, err) => {
    const what = err?.message ? ` ${err.message}${err.error_description ? `: ${err.error_description}` : ''}` : '';
    const oidc = ctx?.oidc;
    console.log(`event ${ev} ${oidc?.params?.grant_type ?? oidc?.route ?? ''} ${oidc?.client?.clientId ?? ''}${what}`);
  });
}

provider.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
