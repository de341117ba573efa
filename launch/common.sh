# shellcheck shell=bash
# Shared by the launch scripts (sourced from the repository root): printing and running commands.
# The sourcing script sets DRY_RUN (1: print the commands, run nothing).

# Prints its arguments as one shell command line: words with special characters single-quoted.
quoted() {
  local out="" arg safe='^[-A-Za-z0-9_./:=,+@%]+$'
  for arg in "$@"; do
    if [[ "${arg}" =~ ${safe} ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Prints a command ("+ cmd"), then runs it unless DRY_RUN=1.
run() {
  echo "+ $(quoted "$@")"
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}
