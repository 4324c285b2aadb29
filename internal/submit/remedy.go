package submit

import (
	"fmt"
	"strings"
)

// Remedy says what a person does about a failed SMTP exchange, for the
// log line, /status and authtool. mailbox is the sending mailbox.
func Remedy(e *SMTPError, mailbox string) string {
	switch {
	case e.Code == 535 && e.condition() == "5.7.139" && strings.Contains(e.Text, "did not meet the criteria"):
		// Exchange Online tells its 5.7.139 refusals apart by the text
		// only (Microsoft, "Troubleshoot SMTP AUTH client submission").
		return fmt.Sprintf("a Microsoft Entra conditional access policy refused the sign-in of %s for SMTP AUTH: "+
			"an admin checks the sign-in logs for the policy and excludes the mailbox or the app from it", mailbox)
	case e.Code == 535 && e.condition() == "5.7.139" && strings.Contains(e.Text, "security defaults"):
		return fmt.Sprintf("the tenant's security defaults block SMTP AUTH for %s: an admin turns security defaults off "+
			"in Microsoft Entra ID (and protects sign-ins with conditional access instead)", mailbox)
	case e.Code == 535 && e.condition() == "5.7.139" && strings.Contains(e.Text, "locked"):
		return fmt.Sprintf("the account %s is locked: an admin unlocks it (or lets the lockout expire) in Microsoft Entra ID", mailbox)
	case e.Code == 535 && e.condition() == "5.7.139":
		return fmt.Sprintf("SMTP AUTH is disabled for the tenant or mailbox. An Exchange admin enables it with: "+
			"Set-CASMailbox -Identity %s -SmtpClientAuthenticationDisabled $false "+
			"(and, if the tenant default is off: Set-TransportConfig -SmtpClientAuthenticationDisabled $false)", mailbox)
	case e.Class == ClassAuth:
		return "the mailbox refused the token: check that the signed-in user is " + mailbox +
			", that the app has the SMTP.Send delegated permission (SMTP.SendAsApp and a mailbox permission for app-only), and re-run authtool login"
	case e.Code == 421 && e.condition() == "4.7.66":
		return "the server wants TLS 1.2 or newer"
	case e.Class == ClassConfig && e.Code == 0 && tlsRemedy(e.Err) != "":
		return tlsRemedy(e.Err)
	case e.Class == ClassConfig && e.Code == 0:
		return "check the account's SMTP address and CA file"
	case e.Class == ClassConfig:
		return "the server refused the XOAUTH2 exchange: check the account's SMTP host (smtp.office365.com:587 for Exchange Online)"
	case e.SendAsDenied():
		return fmt.Sprintf("%s may not send as this message's From: an Exchange admin grants it "+
			"(Add-RecipientPermission -Identity <the From address> -Trustee %s -AccessRights SendAs), "+
			"or the account sends as its own mailbox instead (authtool login --from-policy rewrite: the From address becomes the Reply-To); then replay the dead letter",
			mailbox, mailbox)
	case e.Class == ClassQuota:
		return "the mailbox is over its sending limit (10,000 recipients a day, 30 messages a minute); mail waits for the window"
	case e.Class == ClassAccount && e.condition() != "5.2.2":
		return fmt.Sprintf("Microsoft restricted %s from sending (suspected outbound spam): check that the account is not compromised, "+
			"then an admin releases it on the Microsoft 365 Defender Restricted entities page; its mail waits", mailbox)
	case e.Class == ClassAccount: // 5.2.2
		return "the sending mailbox is full: empty its Sent Items or raise its quota"
	case e.Class == ClassTenant && (e.condition() == "5.7.233" || e.condition() == "5.7.232"):
		return "the tenant reached its daily limit of external recipients (tenant external recipient rate limit); the tenant's mail waits for the 24-hour window"
	case e.Class == ClassTenant:
		return "Microsoft blocked the tenant or its outbound IP: see the Microsoft 365 Defender restricted entities page, or ask Microsoft support to lift the block"
	case e.Class == ClassThrottle:
		return "too many connections for this mailbox (Office 365 allows 3)"
	case e.Class == ClassTransient:
		return "temporary; the relay retries"
	}
	return "the server refused this message; see the reply"
}
