<#
.SYNOPSIS
  Installs (or removes) the regent agent as a Windows service.

.DESCRIPTION
  Copies regent.exe to Program Files, creates C:\ProgramData\regent (config,
  state, provisioning drop-in) readable only by SYSTEM and Administrators,
  writes a default regent.toml if there is none, and registers the service
  "regent" (automatic start, restart on failure) running

      regent.exe agent --windows-service --config C:\ProgramData\regent\regent.toml

  The service's Stop control takes the same shutdown path as SIGTERM on Unix:
  in-flight requests finish, then the pipe closes.

  Named pipe: \\.\pipe\regent-agent (named in regent.toml), created with
  FILE_FLAG_FIRST_PIPE_INSTANCE and the security descriptor
  D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW) plus client-only access for each
  account in [ipc] allow_users / allow_groups. Each client is then identified
  by its process token (user SID, enabled groups) and image path: LocalSystem
  and elevated Administrators administer; allow_users / allow_groups fetch
  tokens; allow_executables narrows this to listed programs.

.PARAMETER Binary
  Path to regent.exe to install (default: next to this script).

.PARAMETER ServerUrl
  The license server's URL, written into a new regent.toml.

.PARAMETER Uninstall
  Stop and delete the service and remove Program Files\regent. The data in
  C:\ProgramData\regent (the device's credential) is kept unless -Purge.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File install.ps1 -ServerUrl https://licensing.example.com
#>
#Requires -RunAsAdministrator
[CmdletBinding()]
param(
    [string]$Binary = (Join-Path $PSScriptRoot 'regent.exe'),
    [string]$ServerUrl = 'https://licensing.example.com',
    [switch]$Uninstall,
    [switch]$Purge
)

$ErrorActionPreference = 'Stop'
$ServiceName = 'regent'
$InstallDir = Join-Path $env:ProgramFiles 'regent'
$DataDir = Join-Path $env:ProgramData 'regent'
$Config = Join-Path $DataDir 'regent.toml'

if ($Uninstall) {
    if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
        Stop-Service -Name $ServiceName -ErrorAction SilentlyContinue
        sc.exe delete $ServiceName | Out-Null
    }
    Remove-Item -Recurse -Force $InstallDir -ErrorAction SilentlyContinue
    if ($Purge) {
        Remove-Item -Recurse -Force $DataDir -ErrorAction SilentlyContinue
    }
    Write-Host "regent removed$(if (-not $Purge) { "; $DataDir kept (use -Purge to delete the credential)" })"
    return
}

if (-not (Test-Path $Binary)) {
    throw "regent.exe not found at $Binary; pass -Binary PATH"
}

New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
Copy-Item -Force $Binary (Join-Path $InstallDir 'regent.exe')

foreach ($dir in @($DataDir, (Join-Path $DataDir 'state'), (Join-Path $DataDir 'provisioning'))) {
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
}
# Secrets (state\secrets.json) and dropped registration tokens live here:
# SYSTEM and Administrators only, nothing inherited.
icacls $DataDir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null

if (-not (Test-Path $Config)) {
    $state = (Join-Path $DataDir 'state') -replace '\\', '/'
    $provisioning = (Join-Path $DataDir 'provisioning') -replace '\\', '/'
    @"
# regent system agent on Windows. Every key: regent.example.toml.
[server]
profile = "sentinel"
url = "$ServerUrl"

[store]
# The service account has no interactive Credential Manager session: a file
# in the state directory, protected by the directory's ACL.
kind = "file"

[state]
dir = "$state"

[provisioning]
dir = "$provisioning"

[ipc]
# The system agent's pipe, named so that the service keeps it whatever
# account it runs as (a per-user agent's default is
# \\.\pipe\regent-agent-<its SID>). Who may fetch tokens besides
# LocalSystem and elevated Administrators: allow_users / allow_groups
# (account names or SIDs), and allow_executables (programs by path).
socket = '\\.\pipe\regent-agent'

[log]
level = "info"
format = "text"
"@ | Set-Content -Encoding UTF8 -Path $Config
}

$exe = Join-Path $InstallDir 'regent.exe'
& $exe agent --check --config $Config
if ($LASTEXITCODE -ne 0) { throw "the configuration $Config is not valid (exit $LASTEXITCODE)" }

$command = "`"$exe`" agent --windows-service --config `"$Config`""
if (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue) {
    Stop-Service -Name $ServiceName -ErrorAction SilentlyContinue
    sc.exe config $ServiceName binPath= $command start= auto | Out-Null
} else {
    New-Service -Name $ServiceName -BinaryPathName $command -StartupType Automatic `
        -DisplayName 'regent licensing agent' `
        -Description 'Keeps a license access token fresh and hands it to licensed applications.' | Out-Null
}
# Restart after a crash: 5 s, 5 s, then every minute; reset the count daily.
sc.exe failure $ServiceName reset= 86400 actions= restart/5000/restart/5000/restart/60000 | Out-Null
Start-Service -Name $ServiceName
Write-Host "regent installed and started; enroll with: regent enroll --token-file TOKEN (as Administrator), or drop a token file into $DataDir\provisioning"
